"""LeNet's shape and initialisation; mixup's math and schedule."""
import torch
import torch.nn.functional as F
from torch import nn

from lenet_mixup.mixup import is_mixup_epoch, mixup_batch, mixup_loss, sample_lambdas
from lenet_mixup.model import NUM_PARAMETERS, lenet


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


def test_mixup_batch_pairs_each_image_with_its_predecessor():
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    mixed = mixup_batch(x, torch.tensor(0.25))
    expected = torch.tensor([0.25 * 0 + 0.75 * 3, 0.25 * 1 + 0.75 * 0, 0.25 * 2 + 0.75 * 1, 0.25 * 3 + 0.75 * 2])
    torch.testing.assert_close(mixed[:, 0, 0, 0], expected)
    assert mixed.shape == x.shape


def test_mixup_loss_matches_the_formula_by_hand():
    torch.manual_seed(0)
    logits, y, lam = torch.randn(5, 10), torch.tensor([3, 1, 4, 1, 5]), 0.3
    log_p = logits.log_softmax(1)
    by_hand = sum(-(lam * log_p[i, y[i]] + (1 - lam) * log_p[i, y[i - 1]]) for i in range(5)) / 5
    torch.testing.assert_close(mixup_loss(logits, y, torch.tensor(lam)), by_hand)


def test_lambdas_are_beta_draws():
    torch.manual_seed(0)
    draws = sample_lambdas(1.0, 4000)
    assert draws.shape == (4000,) and draws.dtype == torch.float32 and ((draws > 0) & (draws < 1)).all()
    assert abs(draws.mean().item() - 0.5) < 0.02
    assert abs(draws.var().item() - 1 / 12) < 0.01  # Beta(1, 1) is uniform
    small = sample_lambdas(0.2, 4000)
    assert ((small < 0.1) | (small > 0.9)).float().mean() > 0.5  # small alpha pushes lambda to 0 or 1


def test_an_epoch_of_lambdas_is_the_same_as_one_draw_per_step():
    """Drawing an epoch's lambdas at once consumes the generator as one draw per step would, so a
    run's lambdas do not depend on how the training path draws them."""
    for alpha in (0.2, 1.0, 2.0):
        torch.manual_seed(3)
        at_once = sample_lambdas(alpha, 500)
        torch.manual_seed(3)
        one_by_one = torch.cat([sample_lambdas(alpha, 1) for _ in range(500)])
        assert torch.equal(at_once, one_by_one)


def test_lambda_of_one_is_the_plain_loss():
    logits, y = torch.randn(6, 10), torch.randint(0, 10, (6,))
    torch.testing.assert_close(mixup_loss(logits, y, torch.tensor(1.0)), F.cross_entropy(logits, y))


def test_warmup_schedule_counts_epochs_from_zero():
    assert [is_mixup_epoch(e, warmup=1) for e in range(3)] == [False, True, True]
    assert [is_mixup_epoch(e, warmup=0) for e in range(2)] == [True, True]


def test_the_pictures_numpy_blend_is_mixup_batch():
    """stages/mixup_examples.py draws without torch; its blend must stay the one training uses."""
    from stages.mixup_examples import blend
    x = torch.rand(6, 3, 32, 32)
    for lam in (0.0, 0.3, 1.0):
        assert torch.equal(torch.from_numpy(blend(x.numpy(), lam)), mixup_batch(x, torch.tensor(lam)))


def test_a_piece_of_a_batch_takes_its_own_piece_of_the_partner_labels():
    """Cut after mixing (lenet_mixup.steps.train_step), the pieces' losses weighted by size add up to the batch's."""
    torch.manual_seed(0)
    logits, y, lam = torch.randn(50, 10, dtype=torch.float64), torch.randint(0, 10, (50,)), torch.tensor(0.3)
    whole = mixup_loss(logits, y, lam)
    partner = y.roll(1, dims=0)
    pieces = sum(mixup_loss(lg, ys, lam, ps) * len(ys) / 50
                 for lg, ys, ps in zip(logits.tensor_split(3), y.tensor_split(3), partner.tensor_split(3), strict=True))
    torch.testing.assert_close(pieces, whole, rtol=1e-12, atol=0)
