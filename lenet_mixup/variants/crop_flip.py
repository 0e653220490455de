"""Random crop and flip, the standard CIFAR augmentation (as in He et al., 2016, and torchvision's
RandomCrop(32, padding=4) with RandomHorizontalFlip()): each image padded by `padding` pixels of zeros,
cropped back to its size at a random offset, and flipped left-right with probability `flip`.

Each image draws its own offset and flip. Every image keeps its own label (the weight is None). A start
for augmentations drawn per image: the draw is an (N, k) tensor, and the transform reads row i for image i.
"""
import torch
import torch.nn.functional as F

from lenet_mixup.params import integer, probability

PARAMS = {"padding": integer(at_least=0), "flip": probability, "warmup": integer(at_least=0)}
ACTION = "cropped and flipped"


def first_epoch(params):
    return params["warmup"]


def draw(params, shape, device):
    """Per image, three uniform numbers in [0, 1): the crop's top and left offsets, and the flip."""
    return torch.rand(shape[0], 3, device=device)


def offsets(draw, padding):
    """Each image's (top, left) offset into its padded copy, whole pixels in [0, 2 * padding]."""
    return (draw[:, :2] * (2 * padding + 1)).floor().clamp(max=2 * padding).long()


def transform(x, draw, params):
    """Image i: its window at offsets(draw)[i] of the zero-padded image, mirrored if draw[i, 2] < flip."""
    n, _, height, width = x.shape
    pad = params["padding"]
    padded = F.pad(x, (pad, pad, pad, pad))
    top_left = offsets(draw, pad)
    columns = torch.arange(width, device=x.device)
    columns = torch.where((draw[:, 2] < params["flip"]).view(-1, 1), width - 1 - columns, columns)  # (N, W)
    rows = top_left[:, :1] + torch.arange(height, device=x.device)  # (N, H)
    columns = columns + top_left[:, 1:]
    # One gather for the whole batch: (N, H, W, C), which permuted to (N, C, H, W) is channels_last.
    cropped = padded[torch.arange(n, device=x.device).view(-1, 1, 1), :, rows.view(n, -1, 1), columns.view(n, 1, -1)]
    return cropped.permute(0, 3, 1, 2), None
