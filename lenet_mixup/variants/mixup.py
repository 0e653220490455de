"""Mixup as FastEstimator's LeNet tutorial ran it (MixUpBatch + MixUpLoss, r1.0b1).

One lambda per batch, lambda ~ Beta(alpha, alpha); the batch is paired with itself rolled by one:
x_mix[i] = lambda * x[i] + (1 - lambda) * x[i-1]; labels stay unmixed and the loss is
lambda * CE(y) + (1 - lambda) * CE(roll(y, 1)). Later FastEstimator releases changed all three;
this is the tutorial's version.
"""
import torch

from lenet_mixup.params import integer, positive_number

PARAMS = {"alpha": positive_number, "warmup": integer(at_least=0)}
NO_MIX = (1.0,)  # lambda 1: the batch as it is


def mixing_from(params):
    """The first `warmup` epochs train plain, as FastEstimator's Scheduler({1: MixUpBatch}) did."""
    return params["warmup"]


def draws(params, steps, device):
    """One lambda per step ~ Beta(alpha, alpha). On the CPU, n draws at once are exactly n single draws in a row."""
    concentration = torch.full((), float(params["alpha"]), device=device)
    beta = torch.distributions.Beta(concentration, concentration, validate_args=False)
    return beta.sample((steps,)).unsqueeze(1)


def mix(x, draw):
    """Every image blended with its predecessor in the batch (the first with the last)."""
    lam = draw[0]
    return lam * x + (1 - lam) * x.roll(1, dims=0), lam
