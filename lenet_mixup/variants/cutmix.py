"""CutMix (Yun et al., 2019, "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
Features"): each image takes a box of pixels from its predecessor in the batch (the pairing mixup uses here).

One box per batch, as in the paper's code (github.com/clovaai/CutMix-PyTorch, `rand_bbox`): lambda ~
Beta(alpha, alpha); the box's sides are int(H sqrt(1 - lambda)) and int(W sqrt(1 - lambda)), its centre a
uniformly random pixel; it spans centre -/+ half a side (halves rounded down), clipped at the image's borders.
The weight of each image's own label is the share of its pixels left as they were: 1 - box area / image area,
after the clipping.
"""
import torch

from lenet_mixup.params import integer, positive_number

PARAMS = {"alpha": positive_number, "warmup": integer(at_least=0)}
ACTION = "mixed"


def first_epoch(params):
    return params["warmup"]


def draw(params, shape, device):
    """One box for the batch: lambda ~ Beta(alpha, alpha), then the box centre's row and column as fractions in
    (0, 1), from Beta(1, 1), the uniform distribution; three numbers, drawn in turn by one call."""
    concentration = torch.ones(3, device=device)  # filled on the device: no copy from the host inside a graph
    concentration[0] = float(params["alpha"])
    return torch.distributions.Beta(concentration, concentration, validate_args=False).sample()


def box(draw, height, width):
    """(top, bottom, left, right) of the box, float tensors holding whole pixels; bottom and right exclusive."""
    lam, row, column = draw[0], draw[1], draw[2]
    side = torch.sqrt(1 - lam)
    half_h, half_w = (height * side).floor().div(2).floor(), (width * side).floor().div(2).floor()
    centre_y, centre_x = (row * height).floor(), (column * width).floor()
    return ((centre_y - half_h).clamp(0, height), (centre_y + half_h).clamp(0, height),
            (centre_x - half_w).clamp(0, width), (centre_x + half_w).clamp(0, width))


def transform(x, draw, params):
    """The box of every image replaced by its predecessor's; tensor operations only, so a CUDA graph captures it."""
    height, width = x.shape[-2:]
    top, bottom, left, right = box(draw, height, width)
    rows = torch.arange(height, device=x.device, dtype=draw.dtype)
    columns = torch.arange(width, device=x.device, dtype=draw.dtype)
    inside = (((rows >= top) & (rows < bottom)).view(-1, 1) & ((columns >= left) & (columns < right)).view(1, -1))
    mixed = torch.where(inside, x.roll(1, dims=0), x)
    return mixed, 1 - (bottom - top) * (right - left) / (height * width)
