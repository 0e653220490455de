"""Mixup as FastEstimator's LeNet tutorial ran it (MixUpBatch + MixUpLoss, r1.0b1).

One lambda per batch, lambda ~ Beta(alpha, alpha); the batch is paired with itself rolled by one:
x_mix[i] = lambda * x[i] + (1 - lambda) * x[i-1]; labels stay unmixed and the loss is
lambda * CE(y) + (1 - lambda) * CE(roll(y, 1)). Later FastEstimator releases changed all three;
this is the tutorial's version.
"""
import torch
import torch.nn.functional as F


def sample_lambdas(alpha, n, device="cpu"):
    """n draws of Beta(alpha, alpha): one epoch's lambdas, one per step, float32 on `device`.

    The one way lambdas are drawn, on the CPU and on CUDA. It uses the device's default generator
    (seeded by torch.manual_seed) and never waits on the host. On the CPU, n draws at once are
    exactly n single draws in a row.
    """
    concentration = torch.full((), float(alpha), device=device)
    return torch.distributions.Beta(concentration, concentration, validate_args=False).sample((n,))


def mixup_batch(x, lam):
    """Blend every image with its predecessor in the batch (the first with the last)."""
    return lam * x + (1 - lam) * x.roll(1, dims=0)


def mixup_loss(logits, y, lam, partner=None):
    """lambda * CE(logits, y) + (1 - lambda) * CE(logits, partner), batch mean.

    `partner` holds the labels of the images mixed in, roll(y, 1); a piece of a batch cut after mixing
    (lenet_mixup.steps.train_step) passes its own piece of them.
    """
    partner = y.roll(1, dims=0) if partner is None else partner
    return lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, partner)


def is_mixup_epoch(epoch, warmup):
    """Epochs count from 0; the first `warmup` epochs train plain, as FastEstimator's Scheduler did."""
    return epoch >= warmup
