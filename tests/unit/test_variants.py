"""LeNet's shape and initialisation; every variant's draws and transform, and the mixed loss.

The registry (lenet_mixup/variant.py) is tested module by module: each defines the interface, draws for a batch
of any size and transforms it into a batch of the same shape and dtype, with a label weight the loss can take.
Then each transform's own math, by hand: mixup's blend, CutMix's box (Yun et al. 2019, the paper's
`rand_bbox`), crop_flip's crop and flip, each image's own.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lenet_mixup import variant
from lenet_mixup.model import NUM_PARAMETERS, lenet
from lenet_mixup.steps import mixed_loss
from lenet_mixup.variants import baseline, crop_flip, cutmix, mixup
from tests.helpers import variant_params as params_of

ALPHA_1 = {"alpha": 1.0, "warmup": 1}
CROP_FLIP = {"padding": 4, "flip": 0.5, "warmup": 0}
SHAPE = (50, 3, 32, 32)


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

def test_the_registry_holds_the_built_in_variants():
    assert {"baseline", "mixup", "cutmix", "crop_flip"} <= set(variant.available())


@pytest.mark.parametrize("name", variant.available())
def test_every_variant_defines_the_interface(name):
    module = variant.load(name)
    assert isinstance(module.PARAMS, dict) and all(callable(check) for check in module.PARAMS.values())
    assert callable(module.first_epoch) and callable(module.draw) and callable(module.transform)
    assert isinstance(module.ACTION, str) and module.ACTION.strip()
    assert variant.epochs_key(module).endswith("_epochs") and variant.epochs_key(module).isidentifier()
    first = module.first_epoch(params_of(name))
    assert first is None or (isinstance(first, int) and first >= 0)


@pytest.mark.parametrize("name", variant.available())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [1, 7, 50])
def test_a_transformed_batch_keeps_its_shape_and_dtype_and_a_weight_the_loss_takes(name, dtype, size):
    module, params = variant.load(name), params_of(name)
    torch.manual_seed(0)
    x = torch.rand(size, 3, 32, 32, dtype=dtype).contiguous(memory_format=torch.channels_last)
    draw = module.draw(params, x.shape, x.device)
    assert isinstance(draw, torch.Tensor) and draw.device == x.device
    out, weight = module.transform(x, draw, params)
    assert out.shape == x.shape and out.dtype == dtype
    assert weight is None or weight.shape in ((), (size,))
    if weight is not None:
        assert ((0 <= weight) & (weight <= 1)).all()
        logits = torch.randn(size, 10, dtype=dtype)
        assert torch.isfinite(mixed_loss(logits, torch.randint(0, 10, (size,)), weight))


def test_the_baseline_leaves_the_batch_as_it_is_and_draws_nothing():
    x = torch.rand(5, 3, 32, 32)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    out, weight = baseline.transform(x, baseline.draw({}, x.shape, "cpu"), {})
    assert out is x and weight is None and torch.equal(torch.get_rng_state(), state)
    assert baseline.first_epoch({}) is None  # never


def test_first_epoch_is_the_first_transformed_epoch_counted_from_zero():
    """Warmup 1: epoch 0 trains plain, epoch 1 transforms (FastEstimator's Scheduler({1: MixUpBatch}))."""
    for module, params in ((mixup, ALPHA_1), (cutmix, ALPHA_1), (crop_flip, CROP_FLIP)):
        assert module.first_epoch({**params, "warmup": 1}) == 1
        assert module.first_epoch({**params, "warmup": 0}) == 0


def test_the_summary_counts_epochs_in_each_variant_s_own_words():
    assert variant.epochs_key(mixup) == variant.epochs_key(cutmix) == "mixed_epochs"
    assert variant.epochs_key(crop_flip) == "cropped_and_flipped_epochs"


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


def test_a_weight_per_image_weights_each_image_s_two_losses():
    torch.manual_seed(0)
    logits, y, weight = torch.randn(5, 10), torch.tensor([3, 1, 4, 1, 5]), torch.tensor([0.1, 0.5, 1.0, 0.0, 0.7])
    log_p = logits.log_softmax(1)
    by_hand = sum(-(weight[i] * log_p[i, y[i]] + (1 - weight[i]) * log_p[i, y[i - 1]]) for i in range(5)) / 5
    torch.testing.assert_close(mixed_loss(logits, y, weight), by_hand)
    same = torch.full((5,), 0.3)  # one weight for every image: the per-batch loss, up to rounding
    torch.testing.assert_close(mixed_loss(logits, y, same), mixed_loss(logits, y, torch.tensor(0.3)))


def test_a_piece_of_a_batch_takes_its_own_piece_of_the_partner_labels():
    """Cut after mixing (lenet_mixup.steps.train_step), the pieces' losses weighted by size add up to the batch's."""
    torch.manual_seed(0)
    logits, y, weight = torch.randn(50, 10, dtype=torch.float64), torch.randint(0, 10, (50,)), torch.tensor(0.3)
    whole = mixed_loss(logits, y, weight)
    partner = y.roll(1, dims=0)
    pieces = sum(mixed_loss(lg, ys, weight, ps) * len(ys) / 50
                 for lg, ys, ps in zip(logits.tensor_split(3), y.tensor_split(3), partner.tensor_split(3), strict=True))
    torch.testing.assert_close(pieces, whole, rtol=1e-12, atol=0)
    per_image = torch.rand(50, dtype=torch.float64)  # a weight per image is cut with its images
    pieces = sum(mixed_loss(lg, ys, ws, ps) * len(ys) / 50 for lg, ys, ws, ps in zip(
        logits.tensor_split(3), y.tensor_split(3), per_image.tensor_split(3), partner.tensor_split(3), strict=True))
    torch.testing.assert_close(pieces, mixed_loss(logits, y, per_image), rtol=1e-12, atol=0)


# Mixup

def test_mixup_blends_each_image_with_its_predecessor():
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    mixed, weight = mixup.transform(x, torch.tensor(0.25), ALPHA_1)
    expected = torch.tensor([0.25 * 0 + 0.75 * 3, 0.25 * 1 + 0.75 * 0, 0.25 * 2 + 0.75 * 1, 0.25 * 3 + 0.75 * 2])
    torch.testing.assert_close(mixed[:, 0, 0, 0], expected)
    assert mixed.shape == x.shape and weight.item() == 0.25


def draws(module, params, n, shape=SHAPE):
    """n batches' draws in a row, as the training loop makes them, stacked."""
    return torch.stack([module.draw(params, shape, "cpu") for _ in range(n)])


def test_mixup_lambdas_are_beta_draws_one_per_batch():
    torch.manual_seed(0)
    lambdas = draws(mixup, ALPHA_1, 4000)
    assert lambdas.shape == (4000,) and lambdas.dtype == torch.float32 and ((lambdas > 0) & (lambdas < 1)).all()
    assert abs(lambdas.mean().item() - 0.5) < 0.02
    assert abs(lambdas.var().item() - 1 / 12) < 0.01  # Beta(1, 1) is uniform
    small = draws(mixup, {"alpha": 0.2, "warmup": 1}, 4000)
    assert ((small < 0.1) | (small > 0.9)).float().mean() > 0.5  # small alpha pushes lambda to 0 or 1


@pytest.mark.parametrize("module", [mixup, cutmix], ids=["mixup", "cutmix"])
def test_a_batch_at_a_time_draws_what_one_call_for_the_epoch_draws(module):
    """On the CPU the generator gives the same numbers a batch at a time as in one call for a whole epoch (the
    way the loop drew before it drew per batch), so the same seed trains the same as it did."""
    for alpha in (0.2, 1.0, 2.0):
        params = {"alpha": alpha, "warmup": 1}
        concentration = torch.tensor([float(alpha), 1.0, 1.0][:3 if module is cutmix else 1])
        torch.manual_seed(3)
        at_once = torch.distributions.Beta(concentration, concentration).sample((500,)).squeeze(-1)
        torch.manual_seed(3)
        assert torch.equal(draws(module, params, 500), at_once), f"alpha {alpha}"


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
    _, weight = cutmix.transform(torch.rand(2, 3, 32, 32), torch.tensor(draw), ALPHA_1)
    assert weight.item() == 1 - (bottom - top) * (right - left) / 1024  # the clipped box's share, exactly


@pytest.mark.parametrize("draw", [(0.75, 0.5, 0.5), (0.5, 0.25, 0.75), (0.0, 0.5, 0.5), (0.9, 0.999, 0.0)])
def test_cutmix_takes_the_box_from_the_predecessor_and_the_rest_from_the_image(draw):
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    top, bottom, left, right = box(draw)
    expected = x.clone()
    expected[:, :, top:bottom, left:right] = x.roll(1, dims=0)[:, :, top:bottom, left:right]  # the first's: the last
    mixed, weight = cutmix.transform(x, torch.tensor(draw), ALPHA_1)
    assert torch.equal(mixed, expected)
    assert weight.item() == pytest.approx(1 - (bottom - top) * (right - left) / 1024, abs=0)


def test_cutmix_weight_is_the_share_of_pixels_left_as_they_were():
    """For many random draws: the weight is exactly the share of each image's own pixels in the mixed batch."""
    torch.manual_seed(0)
    x = torch.arange(2.0).view(2, 1, 1, 1).expand(2, 3, 32, 32)  # image 0 all zeros, image 1 all ones
    for draw in draws(cutmix, {"alpha": 0.5, "warmup": 1}, 200):
        mixed, weight = cutmix.transform(x, draw, ALPHA_1)
        own = (mixed[1] == 1).float().mean().item()
        assert weight.item() == own and (mixed[0] == 0).float().mean().item() == own


def test_cutmix_draws_are_lambda_and_the_box_centre():
    torch.manual_seed(0)
    boxes = draws(cutmix, ALPHA_1, 4000)
    assert boxes.shape == (4000, 3) and boxes.dtype == torch.float32
    lam, centre = boxes[:, 0], boxes[:, 1:]
    assert ((lam > 0) & (lam < 1)).all() and ((centre >= 0) & (centre < 1)).all()
    assert abs(lam.mean().item() - 0.5) < 0.02 and abs(lam.var().item() - 1 / 12) < 0.01  # Beta(1, 1): uniform
    for fraction in centre.T:  # rows and columns uniform, and not the same numbers
        assert abs(fraction.mean().item() - 0.5) < 0.02 and abs(fraction.var().item() - 1 / 12) < 0.01
    assert abs(torch.corrcoef(boxes.T)[torch.triu_indices(3, 3, 1).unbind()]).max() < 0.1  # independent
    small = draws(cutmix, {"alpha": 0.2, "warmup": 1}, 4000)[:, 0]
    assert ((small < 0.1) | (small > 0.9)).float().mean() > 0.5  # small alpha pushes lambda to 0 or 1


# crop_flip

def by_hand(x, top, left, flipped, pad=4):
    """One image cropped and flipped by hand: zero padding, a 32 x 32 window at (top, left), then the mirror."""
    padded = torch.zeros(3, 32 + 2 * pad, 32 + 2 * pad, dtype=x.dtype)
    padded[:, pad:pad + 32, pad:pad + 32] = x
    window = padded[:, top:top + 32, left:left + 32]
    return window.flip(-1) if flipped else window


def crop_draw(top, left, flipped, pad=4):
    """The draw row that gives this offset and flip: the middle of each offset's interval, a flip below 0.5."""
    return [(top + 0.5) / (2 * pad + 1), (left + 0.5) / (2 * pad + 1), 0.25 if flipped else 0.75]


def test_crop_flip_crops_and_flips_each_image_by_hand():
    torch.manual_seed(0)
    cases = [(4, 4, False), (0, 0, False), (8, 8, True), (0, 8, True), (8, 0, False), (3, 5, True), (4, 4, True)]
    x = torch.rand(len(cases), 3, 32, 32)
    out, weight = crop_flip.transform(x, torch.tensor([crop_draw(*c) for c in cases]), CROP_FLIP)
    assert weight is None  # every image keeps its own label
    for i, case in enumerate(cases):
        assert torch.equal(out[i], by_hand(x[i], *case)), case
    assert torch.equal(out[0], x[0])  # the centre window, unflipped: the image itself
    assert (out[1, :, :4, :] == 0).all() and (out[1, :, :, :4] == 0).all()  # top-left window: 4 rows and columns of 0


def test_crop_flip_with_no_padding_and_no_flip_is_the_identity_and_always_flips_with_one():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 32, 32)
    draw = crop_flip.draw(CROP_FLIP, x.shape, "cpu")
    assert torch.equal(crop_flip.transform(x, draw, {**CROP_FLIP, "padding": 0, "flip": 0.0})[0], x)
    assert torch.equal(crop_flip.transform(x, draw, {**CROP_FLIP, "padding": 0, "flip": 1.0})[0], x.flip(-1))


def test_crop_flip_keeps_channels_last_and_the_dtype():
    x = torch.rand(5, 3, 32, 32, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    out, _ = crop_flip.transform(x, crop_flip.draw(CROP_FLIP, x.shape, "cpu"), CROP_FLIP)
    assert out.is_contiguous(memory_format=torch.channels_last) and out.dtype == torch.float64


def test_crop_flip_draws_each_image_s_offset_and_flip_independently():
    """Per image, and between images: every offset 0..8 equally likely in each direction, a flip in half the
    images, no number telling another."""
    torch.manual_seed(0)
    draw = crop_flip.draw(CROP_FLIP, (20000, 3, 32, 32), "cpu")
    assert draw.shape == (20000, 3) and ((draw >= 0) & (draw < 1)).all()
    offsets = crop_flip.offsets(draw, 4)
    for column in offsets.T:  # uniform over the 9 offsets
        counts = torch.bincount(column, minlength=9)
        assert len(counts) == 9 and (abs(counts / 20000 - 1 / 9) < 0.01).all()
    flips = (draw[:, 2] < 0.5).float()
    assert abs(flips.mean().item() - 0.5) < 0.01
    numbers = torch.stack([offsets[:, 0].float(), offsets[:, 1].float(), flips])
    assert abs(torch.corrcoef(numbers)[torch.triu_indices(3, 3, 1).unbind()]).max() < 0.03  # within an image
    for quantity in numbers:  # and between neighbouring images
        assert abs(torch.corrcoef(torch.stack([quantity[:-1], quantity[1:]]))[0, 1]) < 0.03
    again = crop_flip.draw(CROP_FLIP, (4, 3, 32, 32), "cpu")
    assert not torch.equal(again[0], again[1])  # not one draw for the batch


def test_crop_flip_offsets_are_whole_pixels_within_the_padding():
    edges = torch.tensor([[0.0, 0.999999, 0.0], [1 / 9, 8 / 9, 0.0], [0.9999999, 0.5, 0.0]])
    assert crop_flip.offsets(edges, 4).tolist() == [[0, 8], [1, 8], [8, 4]]
    assert crop_flip.offsets(edges, 0).tolist() == [[0, 0], [0, 0], [0, 0]]
