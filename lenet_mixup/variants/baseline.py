"""The baseline: every batch as it comes, each image with its own label. The reference of every comparison.

It never transforms, so its section in params.yaml is empty (`baseline: {}`). It still defines `draw` and
`transform` (nothing, and the identity) for the CUDA graph, which captures one step for every variant.
"""
import torch

PARAMS = {}
ACTION = "left as they are"


def first_epoch(params):
    return None


def draw(params, shape, device):
    return torch.empty(0, device=device)


def transform(x, draw, params):
    return x, None
