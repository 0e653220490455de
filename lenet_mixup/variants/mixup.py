"""Mixup as FastEstimator's LeNet tutorial ran it (MixUpBatch + MixUpLoss, r1.0b1).

One lambda per batch, lambda ~ Beta(alpha, alpha); the batch is paired with itself rolled by one:
x_mix[i] = lambda * x[i] + (1 - lambda) * x[i-1]; labels stay unmixed and the loss is
lambda * CE(y) + (1 - lambda) * CE(roll(y, 1)). Later FastEstimator releases changed all three;
this is the tutorial's version.
"""
import torch

from lenet_mixup.params import integer, positive_number

PARAMS = {"alpha": positive_number, "warmup": integer(at_least=0)}
ACTION = "mixed"


def first_epoch(params):
    """The first `warmup` epochs train plain, as FastEstimator's Scheduler({1: MixUpBatch}) did."""
    return params["warmup"]


def draw(params, shape, device):
    """The batch's lambda ~ Beta(alpha, alpha), a 0-d tensor. On the CPU, draws one after another are exactly
    the draws of one call for many, so a run's lambdas do not depend on how the loop asks for them."""
    concentration = torch.full((), float(params["alpha"]), device=device)
    return torch.distributions.Beta(concentration, concentration, validate_args=False).sample()


def transform(x, lam, params):
    """Every image blended with its predecessor in the batch (the first with the last)."""
    return lam * x + (1 - lam) * x.roll(1, dims=0), lam
