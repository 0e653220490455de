"""The baseline: every batch as it comes, each image with its own label. The reference of every comparison.

It never mixes, so its section in params.yaml is empty (`baseline: {}`). Its `mix` is the identity, for
the CUDA graph, which replays one captured step for every variant (lenet_mixup.steps.GraphedEpochs).
"""
import torch

PARAMS = {}
NO_MIX = (1.0,)  # the weight of each image's own label


def mixing_from(params):
    return None


def draws(params, steps, device):
    return torch.ones(steps, 1, device=device)


def mix(x, draw):
    return x, draw[0]
