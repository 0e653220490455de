"""FGSM and the expected calibration error, on cases small enough to check by hand."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lenet_mixup.robustness import expected_calibration_error, fgsm, reliability_bins


def tiny_model_and_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    x, y = torch.rand(64, 3, 4, 4), torch.randint(0, 10, (64,))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):  # fit the batch, so there is accuracy to lose
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model, x, y


def test_fgsm_moves_every_value_by_epsilon_along_the_gradient_sign():
    model, x, y = tiny_model_and_batch()
    x = x.clamp(0.1, 0.9)  # away from the edges: no clipping
    eps = 2 / 255
    attacked = fgsm(model, x, y, eps)
    x_grad = x.clone().requires_grad_(True)
    F.cross_entropy(model(x_grad), y).backward()
    torch.testing.assert_close(attacked - x, eps * x_grad.grad.sign(), rtol=0, atol=1e-6)
    assert not attacked.requires_grad


def test_fgsm_clips_to_the_unit_range():
    model, x, y = tiny_model_and_batch()
    attacked = fgsm(model, x, y, 0.5)
    assert attacked.min() >= 0 and attacked.max() <= 1
    unclipped = x + 0.5 * (attacked - x).sign()
    assert ((attacked == unclipped) | (attacked == 0) | (attacked == 1)).all()


def test_accuracy_does_not_rise_with_epsilon():
    model, x, y = tiny_model_and_batch()
    accuracy = [(model(fgsm(model, x, y, e / 255)).argmax(1) == y).float().mean().item() for e in (0, 1, 2, 4, 8, 32)]
    assert accuracy[0] > 0.9
    assert all(a >= b for a, b in zip(accuracy, accuracy[1:], strict=False)), accuracy
    assert accuracy[-1] < accuracy[0]


def predictions(cases, predicted=0):
    """For each (confidence, right): 10 predictions of class `predicted` at that confidence, `right` of them correct."""
    probs, labels = [], []
    for confidence, right in cases:
        for i in range(10):
            p = torch.full((10,), (1 - confidence) / 9)
            p[predicted] = confidence
            probs.append(p)
            labels.append(predicted if i < right else predicted + 1)
    return torch.stack(probs), torch.tensor(labels)


def test_perfectly_calibrated_predictions_have_zero_ece():
    # In each confidence bin the accuracy equals the confidence: 0.7 -> 7 of 10 right, 0.9 -> 9 of 10.
    probs, labels = predictions([(0.7, 7), (0.9, 9)])
    assert expected_calibration_error(probs, labels, bins=15) == pytest.approx(0, abs=1e-6)


def test_known_miscalibration():
    # 10 predictions at confidence 0.9 with 5 right, and 10 at 0.6 with all right:
    # ECE = 0.5 * |0.5 - 0.9| + 0.5 * |1.0 - 0.6| = 0.4
    probs, labels = predictions([(0.9, 5), (0.6, 10)], predicted=3)
    assert expected_calibration_error(probs, labels, bins=15) == pytest.approx(0.4, abs=1e-6)
    bins = reliability_bins(probs.max(1).values, probs.argmax(1) == labels, 15)
    assert sum(n for _, _, n, _, _ in bins) == 20 and len(bins) == 15
    assert [round(acc, 3) for _, _, n, _, acc in bins if n] == [1.0, 0.5]
