"""The training stage's own behaviour, run in-process on tiny prepared data."""
import shutil

import pytest
import torch
import torch.nn.functional as F

from stages import paths, prepare, steps, train
from stages.model import lenet
from stages.stage import UserError

TRAIN = {"epochs": 2, "batch_size": 50, "lr": 0.001, "seed": 0, "device": "cpu"}


@pytest.fixture
def prepared(tmp_path, monkeypatch, tiny_archive):
    """A working folder holding data/prepared/ from the tiny archive."""
    monkeypatch.chdir(tmp_path)
    paths.RAW_ARCHIVE.parent.mkdir(parents=True)
    shutil.copy(tiny_archive[0], paths.RAW_ARCHIVE)
    prepare.main()
    return tmp_path


def test_prepare_writes_normalized_nchw_arrays(prepared):
    import numpy as np
    x = np.load(paths.prepared_file("train_x"), mmap_mode="r")
    assert x.shape == (250, 3, 32, 32) and x.dtype == np.float32
    assert x.min() == 0 and x.max() == 1
    assert np.load(paths.prepared_file("eval_y")).dtype == np.int64


def test_lambda_drawn_once_per_batch_only_after_warmup(prepared, monkeypatch):
    drawn = []
    real = steps.sample_lambda

    def spy(alpha, device):
        drawn.append(alpha)
        return real(alpha, device)
    monkeypatch.setattr(steps, "sample_lambda", spy)
    rows, _, _ = train.train_variant("mixup", TRAIN, {"alpha": 0.4, "warmup": 1}, torch.device("cpu"))
    assert drawn == [0.4] * 5  # 250 images / batch 50: one draw per batch, in epoch 2 only
    assert len(rows) == 2


def test_baseline_never_mixes(prepared, monkeypatch):
    monkeypatch.setattr(steps, "sample_lambda", lambda *a: pytest.fail("baseline drew a lambda"))
    train.train_variant("baseline", TRAIN, None, torch.device("cpu"))


def test_evaluation_is_plain_cross_entropy(prepared):
    x, y = train.load_split("eval", torch.device("cpu"))
    model = lenet()
    loss, acc = train.evaluate(model, x, y)
    with torch.no_grad():
        logits = model(x)
    assert loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert acc == pytest.approx((logits.argmax(1) == y).float().mean().item())


def test_mixup_epoch_zero_equals_the_baseline(prepared):
    """With warmup 1 the first epoch is plain training: both variants agree exactly there."""
    base, _, _ = train.train_variant("baseline", {**TRAIN, "epochs": 1}, None, torch.device("cpu"))
    mixed, _, _ = train.train_variant("mixup", {**TRAIN, "epochs": 1}, {"alpha": 1.0, "warmup": 1},
                                      torch.device("cpu"))
    assert base[0]["train_loss"] == mixed[0]["train_loss"] and base[0]["eval_acc"] == mixed[0]["eval_acc"]


def test_same_seed_gives_identical_metrics(prepared):
    def metrics():
        rows, _, _ = train.train_variant("mixup", TRAIN, {"alpha": 1.0, "warmup": 1}, torch.device("cpu"))
        return [{k: v for k, v in r.items() if k not in ("seconds", "examples_per_sec")} for r in rows]
    first = metrics()
    assert metrics() == first
    other, _, _ = train.train_variant("mixup", {**TRAIN, "seed": 1}, {"alpha": 1.0, "warmup": 1},
                                      torch.device("cpu"))
    assert other[-1]["train_loss"] != first[-1]["train_loss"]


def test_batch_larger_than_training_set_is_refused(prepared):
    with pytest.raises(UserError, match="larger than the 250 training images"):
        train.train_variant("baseline", {**TRAIN, "batch_size": 251}, None, torch.device("cpu"))


def test_diverging_loss_stops_with_epoch_and_step(prepared):
    with pytest.raises(UserError, match=r"training loss became (nan|inf) at epoch \d+, step \d+ of 5"):
        train.train_variant("baseline", {**TRAIN, "lr": 1e6, "epochs": 3}, None, torch.device("cpu"))
