"""LeNet's shape and initialisation; every variant's transform, its draws and the mixed loss.

The registry (lenet_mixup/variant.py) is tested module by module: each defines the interface, and its NO_MIX
leaves a batch exactly as it is, which the CUDA path relies on for its plain epochs. Then each transform's
own math, by hand: mixup's blend and CutMix's box (Yun et al. 2019, the paper's `rand_bbox`).
"""
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lenet_mixup import variant
from lenet_mixup.model import NUM_PARAMETERS, lenet
from lenet_mixup.params import load_params
from lenet_mixup.steps import mixed_loss
from lenet_mixup.variants import baseline, cutmix, mixup
from tests.helpers import ROOT

ALPHA_1 = {"alpha": 1.0, "warmup": 1}


@functools.cache
def params_of(name):
    """A variant's section of the project's params.yaml, checked against the variant's schema."""
    return load_params(name, path=ROOT / "params.yaml")[name]


def test_lenet_shape_and_parameter_count():
    model = lenet()
    assert model(torch.zeros(7, 3, 32, 32)).shape == (7, 10)
    assert sum(p.numel() for p in model.parameters()) == NUM_PARAMETERS == 122_570


def test_lenet_has_glorot_uniform_weights_and_zero_biases():
    torch.manual_seed(0)
    layers = [m for m in lenet() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 5
    for layer in layers:
        w = layer.weight
        receptive = w[0, 0].numel() if w.dim() == 4 else 1
        limit = (6 / ((w.shape[0] + w.shape[1]) * receptive)) ** 0.5
        assert w.abs().max() <= limit
        assert w.abs().max() > 0.9 * limit  # spread over the whole range, not a narrower default
        assert abs(w.std().item() - limit / 3**0.5) < 0.1 * limit  # a uniform's std
        assert (layer.bias == 0).all()


# Every variant in the registry

def test_the_registry_holds_the_three_variants():
    assert {"baseline", "mixup", "cutmix"} <= set(variant.available())


@pytest.mark.parametrize("name", variant.available())
def test_every_variant_defines_the_interface(name):
    module = variant.load(name)
    assert isinstance(module.PARAMS, dict) and all(callable(check) for check in module.PARAMS.values())
    assert callable(module.mixing_from) and callable(module.draws) and callable(module.mix)
    assert isinstance(module.NO_MIX, tuple) and module.NO_MIX and all(isinstance(v, float) for v in module.NO_MIX)
    first = module.mixing_from(params_of(name))
    assert first is None or (isinstance(first, int) and first >= 0)


@pytest.mark.parametrize("name", variant.available())
def test_draws_are_a_float32_row_per_step_as_wide_as_no_mix(name):
    module = variant.load(name)
    torch.manual_seed(0)
    draws = module.draws(params_of(name), 7, "cpu")
    assert draws.shape == (7, len(module.NO_MIX)) and draws.dtype == torch.float32 and draws.device.type == "cpu"


@pytest.mark.parametrize("name", variant.available())
def test_no_mix_leaves_the_batch_exactly_as_it_is_with_weight_one(name):
    module = variant.load(name)
    x = torch.rand(5, 3, 32, 32)
    mixed, weight = module.mix(x, torch.tensor(module.NO_MIX))
    assert torch.equal(mixed, x)
    assert weight.dim() == 0 and weight.item() == 1.0


@pytest.mark.parametrize("name", variant.available())
def test_mix_keeps_the_batch_shape_dtype_and_channels_last(name):
    module = variant.load(name)
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        x = torch.rand(5, 3, 32, 32, dtype=dtype).contiguous(memory_format=torch.channels_last)
        for draw in (module.draws(params_of(name), 1, "cpu")[0], torch.tensor(module.NO_MIX)):
            mixed, weight = module.mix(x, draw)
            assert mixed.shape == x.shape and mixed.dtype == dtype and weight.dim() == 0
            assert mixed.is_contiguous(memory_format=torch.channels_last), f"{name} lost channels_last"


def test_mixing_from_is_the_first_mixed_epoch_counted_from_zero():
    """Warmup 1: epoch 0 trains plain, epoch 1 mixes (FastEstimator's Scheduler({1: MixUpBatch}))."""
    for module in (mixup, cutmix):
        assert module.mixing_from({"alpha": 1.0, "warmup": 1}) == 1
        assert module.mixing_from({"alpha": 1.0, "warmup": 0}) == 0
    assert baseline.mixing_from({}) is None  # never


# The mixed loss

def test_mixed_loss_matches_the_formula_by_hand():
    torch.manual_seed(0)
    logits, y, weight = torch.randn(5, 10), torch.tensor([3, 1, 4, 1, 5]), 0.3
    log_p = logits.log_softmax(1)
    by_hand = sum(-(weight * log_p[i, y[i]] + (1 - weight) * log_p[i, y[i - 1]]) for i in range(5)) / 5
    torch.testing.assert_close(mixed_loss(logits, y, torch.tensor(weight)), by_hand)


def test_a_weight_of_one_is_exactly_the_plain_loss():
    logits, y = torch.randn(6, 10), torch.randint(0, 10, (6,))
    assert torch.equal(mixed_loss(logits, y, torch.tensor(1.0)), F.cross_entropy(logits, y))


def test_a_piece_of_a_batch_takes_its_own_piece_of_the_partner_labels():
    """Cut after mixing (lenet_mixup.steps.train_step), the pieces' losses weighted by size add up to the batch's."""
    torch.manual_seed(0)
    logits, y, weight = torch.randn(50, 10, dtype=torch.float64), torch.randint(0, 10, (50,)), torch.tensor(0.3)
    whole = mixed_loss(logits, y, weight)
    partner = y.roll(1, dims=0)
    pieces = sum(mixed_loss(lg, ys, weight, ps) * len(ys) / 50
                 for lg, ys, ps in zip(logits.tensor_split(3), y.tensor_split(3), partner.tensor_split(3), strict=True))
    torch.testing.assert_close(pieces, whole, rtol=1e-12, atol=0)


# Mixup

def test_mixup_blends_each_image_with_its_predecessor():
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    mixed, weight = mixup.mix(x, torch.tensor([0.25]))
    expected = torch.tensor([0.25 * 0 + 0.75 * 3, 0.25 * 1 + 0.75 * 0, 0.25 * 2 + 0.75 * 1, 0.25 * 3 + 0.75 * 2])
    torch.testing.assert_close(mixed[:, 0, 0, 0], expected)
    assert mixed.shape == x.shape and weight.item() == 0.25


def test_mixup_lambdas_are_beta_draws():
    torch.manual_seed(0)
    draws = mixup.draws(ALPHA_1, 4000, "cpu")
    assert draws.shape == (4000, 1) and draws.dtype == torch.float32 and ((draws > 0) & (draws < 1)).all()
    assert abs(draws.mean().item() - 0.5) < 0.02
    assert abs(draws.var().item() - 1 / 12) < 0.01  # Beta(1, 1) is uniform
    small = mixup.draws({"alpha": 0.2, "warmup": 1}, 4000, "cpu")
    assert ((small < 0.1) | (small > 0.9)).float().mean() > 0.5  # small alpha pushes lambda to 0 or 1


@pytest.mark.parametrize("module", [mixup, cutmix], ids=["mixup", "cutmix"])
def test_an_epoch_of_draws_is_the_same_as_one_draw_per_step(module):
    """Drawing an epoch's draws at once consumes the generator as one draw per step would, so a run's
    draws do not depend on how the training path draws them."""
    for alpha in (0.2, 1.0, 2.0):
        params = {"alpha": alpha, "warmup": 1}
        torch.manual_seed(3)
        at_once = module.draws(params, 500, "cpu")
        torch.manual_seed(3)
        one_by_one = torch.cat([module.draws(params, 1, "cpu") for _ in range(500)])
        assert torch.equal(at_once, one_by_one), f"alpha {alpha}"


# CutMix

def box(draw, height=32, width=32):
    """cutmix.box as whole pixels: (top, bottom, left, right)."""
    return tuple(int(t.item()) for t in cutmix.box(torch.tensor(draw), height, width))


def test_cutmix_box_by_hand():
    # lambda 0.75: sides int(32 * sqrt(0.25)) = 16, so 8 each side of the centre pixel (16, 16)
    assert box((0.75, 0.5, 0.5)) == (8, 24, 8, 24)
    # lambda 0: the whole image
    assert box((0.0, 0.5, 0.5)) == (0, 32, 0, 32)
    # an odd side, 7 (sqrt(1 - 975/1024) = 7/32), spans centre -/+ 3: 6 pixels, as the paper's code rounds
    assert box((975 / 1024, 0.5, 0.5)) == (13, 19, 13, 19)
    # rows and columns not swapped: 20 x 40, sides 10 and 20 around the centre pixel (10, 20)
    assert box((0.75, 0.5, 0.5), 20, 40) == (5, 15, 10, 30)
    # the centre is the pixel the fractions fall in: row 0.3 -> pixel 9, column 0.7 -> pixel 22
    assert box((0.75, 0.3, 0.7)) == (1, 17, 14, 30)


@pytest.mark.parametrize("draw, expected", [
    ((0.75, 0.0, 0.5), (0, 8, 8, 24)),  # top border
    ((0.75, 0.999, 0.5), (23, 32, 8, 24)),  # bottom border (centre pixel 31)
    ((0.75, 0.5, 0.0), (8, 24, 0, 8)),  # left border
    ((0.75, 0.5, 0.999), (8, 24, 23, 32)),  # right border
    ((0.75, 0.0, 0.0), (0, 8, 0, 8)),  # top-left corner
    ((0.75, 0.0, 0.999), (0, 8, 23, 32)),  # top-right corner
    ((0.75, 0.999, 0.0), (23, 32, 0, 8)),  # bottom-left corner
    ((0.75, 0.999, 0.999), (23, 32, 23, 32)),  # bottom-right corner
    ((0.5, 0.25, 0.75), (0, 19, 13, 32)),  # sides 22: clipped at the top and the right
], ids=["top", "bottom", "left", "right", "top-left", "top-right", "bottom-left", "bottom-right", "top-right-big"])
def test_cutmix_box_is_clipped_at_the_borders_and_the_weight_follows(draw, expected):
    assert box(draw) == expected
    top, bottom, left, right = expected
    _, weight = cutmix.mix(torch.rand(2, 3, 32, 32), torch.tensor(draw))
    assert weight.item() == 1 - (bottom - top) * (right - left) / 1024  # the clipped box's share, exactly


@pytest.mark.parametrize("draw", [(0.75, 0.5, 0.5), (0.5, 0.25, 0.75), (0.0, 0.5, 0.5), (0.9, 0.999, 0.0)])
def test_cutmix_takes_the_box_from_the_predecessor_and_the_rest_from_the_image(draw):
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    top, bottom, left, right = box(draw)
    expected = x.clone()
    expected[:, :, top:bottom, left:right] = x.roll(1, dims=0)[:, :, top:bottom, left:right]  # the first's: the last
    mixed, weight = cutmix.mix(x, torch.tensor(draw))
    assert torch.equal(mixed, expected)
    assert weight.item() == pytest.approx(1 - (bottom - top) * (right - left) / 1024, abs=0)


def test_cutmix_weight_is_the_share_of_pixels_left_as_they_were():
    """For many random draws: the weight is exactly the share of each image's own pixels in the mixed batch."""
    torch.manual_seed(0)
    x = torch.arange(2.0).view(2, 1, 1, 1).expand(2, 3, 32, 32)  # image 0 all zeros, image 1 all ones
    for draw in cutmix.draws({"alpha": 0.5, "warmup": 1}, 200, "cpu"):
        mixed, weight = cutmix.mix(x, draw)
        own = (mixed[1] == 1).float().mean().item()
        assert weight.item() == own and (mixed[0] == 0).float().mean().item() == own


def test_cutmix_draws_are_lambda_and_the_box_centre():
    torch.manual_seed(0)
    draws = cutmix.draws(ALPHA_1, 4000, "cpu")
    assert draws.shape == (4000, 3) and draws.dtype == torch.float32
    lam, centre = draws[:, 0], draws[:, 1:]
    assert ((lam > 0) & (lam < 1)).all() and ((centre >= 0) & (centre < 1)).all()
    assert abs(lam.mean().item() - 0.5) < 0.02 and abs(lam.var().item() - 1 / 12) < 0.01  # Beta(1, 1): uniform
    for fraction in centre.T:  # rows and columns uniform, and not the same numbers
        assert abs(fraction.mean().item() - 0.5) < 0.02 and abs(fraction.var().item() - 1 / 12) < 0.01
    assert abs(torch.corrcoef(draws.T)[torch.triu_indices(3, 3, 1).unbind()]).max() < 0.1  # independent
    small = cutmix.draws({"alpha": 0.2, "warmup": 1}, 4000, "cpu")[:, 0]
    assert ((small < 0.1) | (small > 0.9)).float().mean() > 0.5  # small alpha pushes lambda to 0 or 1
