"""The training loop's own behaviour, run in-process on tiny prepared data."""
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from lenet_mixup import evaluation, paths, training
from lenet_mixup.data import load_split
from lenet_mixup.evaluation import evaluate
from lenet_mixup.model import lenet
from lenet_mixup.stage import UserError
from tests.conftest import ROOT, TEST_PARAMS, dvc_env, project_params

TRAIN = {**TEST_PARAMS["train"], "device": "cpu"}
MIXUP = {"alpha": 1.0, "warmup": 1}
CPU = torch.device("cpu")
TIMING = ("seconds", "examples_per_sec")


def curve(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_prepare_writes_normalized_nchw_arrays(prepared):
    import numpy as np
    x = np.load(paths.prepared_file("train_x"), mmap_mode="r")
    assert x.shape == (250, 3, 32, 32) and x.dtype == np.float32
    assert x.min() == 0 and x.max() == 1
    assert np.load(paths.prepared_file("eval_y")).dtype == np.int64


def test_lambdas_drawn_once_per_batch_only_after_warmup(prepared, monkeypatch):
    drawn = []
    real = training.sample_lambdas

    def spy(alpha, n, device):
        drawn.append((alpha, n))
        return real(alpha, n, device)
    monkeypatch.setattr(training, "sample_lambdas", spy)
    rows, _, _, _ = training.train_variant("mixup", {**TRAIN, "epochs": 3}, {"alpha": 0.4, "warmup": 1}, CPU)
    assert drawn == [(0.4, 5), (0.4, 5)]  # 250 images / batch 50: one lambda per step, from epoch 2 on
    assert len(rows) == 3


def test_baseline_never_mixes(prepared, monkeypatch):
    monkeypatch.setattr(training, "sample_lambdas", lambda *a: pytest.fail("baseline drew a lambda"))
    training.train_variant("baseline", TRAIN, None, CPU)


def test_evaluation_is_plain_cross_entropy_over_several_eval_batches(prepared, monkeypatch):
    monkeypatch.setattr(evaluation, "EVAL_BATCH", 30)  # 100 eval images: batches of 30, 30, 30 and 10
    x, y = load_split("eval", CPU)
    model = lenet()
    loss, acc = evaluate(model, x, y)
    with torch.no_grad():
        logits = model(x)
    assert loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert acc == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert evaluation.predict(model, x).shape == (100, 10)


def test_best_checkpoint_holds_the_lowest_eval_loss_weights(prepared):
    rows, best, final, _ = training.train_variant("baseline", {**TRAIN, "epochs": 8, "lr": 0.01}, None, CPU)
    losses = [r["eval_loss"] for r in rows]
    assert best["epoch"] == losses.index(min(losses)) + 1 != len(rows)  # lr 0.01 over-fits: not the last epoch
    x, y = load_split("eval", CPU)
    for checkpoint, row in ((best, rows[best["epoch"] - 1]), (final, rows[-1])):
        model = lenet().to(memory_format=torch.channels_last)
        model.load_state_dict(checkpoint["model"])
        assert evaluate(model, x, y) == (row["eval_loss"], row["eval_acc"])


def test_mixup_epoch_zero_equals_the_baseline(prepared):
    """With warmup 1 the first epoch is plain training: both variants agree exactly there."""
    base, _, _, _ = training.train_variant("baseline", {**TRAIN, "epochs": 1}, None, CPU)
    mixed, _, _, _ = training.train_variant("mixup", {**TRAIN, "epochs": 1}, MIXUP, CPU)
    assert curve(base) == curve(mixed)


def test_same_seed_gives_identical_metrics(prepared):
    def metrics(train):
        return curve(training.train_variant("mixup", train, MIXUP, CPU)[0])
    first = metrics(TRAIN)
    assert metrics(TRAIN) == first
    assert metrics({**TRAIN, "seed": 1})[-1]["train_loss"] != first[-1]["train_loss"]


def test_steps_per_epoch_and_validation_steps_cap_each_epoch(prepared):
    rows, _, _, _ = training.train_variant("mixup", {**TRAIN, "steps_per_epoch": 3, "validation_steps": 1},
                                           MIXUP, CPU)
    assert [(r["train_steps"], r["eval_images"], r["step"]) for r in rows] == [(3, 50, 3), (3, 50, 6)]
    full, _, _, _ = training.train_variant("mixup", {**TRAIN, "steps_per_epoch": 99}, MIXUP, CPU)
    assert [(r["train_steps"], r["eval_images"]) for r in full] == [(5, 100), (5, 100)]  # a cap above the set


def test_bf16_trains_and_is_deterministic(prepared):
    bf16 = {**TRAIN, "precision": "bf16"}
    first = curve(training.train_variant("mixup", bf16, MIXUP, CPU)[0])
    assert curve(training.train_variant("mixup", bf16, MIXUP, CPU)[0]) == first
    fp32 = curve(training.train_variant("mixup", TRAIN, MIXUP, CPU)[0])
    assert first != fp32  # bf16 autocast really ran
    for a, b in zip(first, fp32, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.05)


def test_cpu_training_reports_its_path(prepared):
    assert training.train_variant("baseline", {**TRAIN, "epochs": 1}, None, CPU)[3] == {"train_path": "cpu"}


def test_each_stage_loads_only_the_libraries_it_uses(prepared):
    """A stage's start-up is mostly imports. The stages without a model import no torch; a training stage,
    which makes an optimizer, does not load torch._dynamo (torch.compile's tracer, which every torch.optim
    optimizer imports as it is made: a second of each training stage, hence lenet_mixup.steps.FusedAdam)."""
    (prepared / "params.yaml").write_text(project_params(train={"epochs": 1}))
    env = {**dvc_env(), "PYTHONPATH": str(ROOT)}
    for script in (
            "import sys, stages.download, stages.prepare, stages.compare, stages.mixup_examples, stages.plots_page\n"
            "print('loaded:', [m for m in ('torch',) if m in sys.modules])",
            "import runpy, sys\nsys.argv = ['stages/train.py', 'baseline']\n"
            "runpy.run_module('stages.train', run_name='__main__')\n"
            "print('loaded:', [m for m in ('torch._dynamo',) if m in sys.modules])"):
        done = subprocess.run([sys.executable, "-c", script], cwd=prepared, env=env, capture_output=True, text=True)
        assert done.returncode == 0 and done.stdout.splitlines()[-1] == "loaded: []", done.stdout + done.stderr


def test_batch_larger_than_training_set_is_refused(prepared):
    with pytest.raises(UserError, match="larger than the 250 training images"):
        training.train_variant("baseline", {**TRAIN, "batch_size": 251}, None, CPU)


def test_diverging_loss_stops_with_epoch_and_step(prepared):
    with pytest.raises(UserError, match=r"training loss became (nan|inf) at epoch \d+, step \d+ of 5"):
        training.train_variant("baseline", {**TRAIN, "lr": 1e6, "epochs": 3}, None, CPU)


def test_the_fingerprint_names_the_device_type_that_trains(prepared):
    config = {"variant": "baseline", "train": TRAIN, "mixup": None}
    assert training.fingerprint(config, CPU) == training.fingerprint(config, CPU)
    assert training.fingerprint(config, CPU) != training.fingerprint(config, torch.device("cuda"))


def test_the_resume_state_holds_the_generator_of_the_training_device(monkeypatch):
    shuffle = torch.Generator()
    assert set(training.rng_states(shuffle, CPU)) == {"shuffle_rng", "cpu_rng"}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.full((16,), 7, dtype=torch.uint8))
    on_cuda = training.rng_states(shuffle, torch.device("cuda"))
    assert set(on_cuda) == {"shuffle_rng", "cpu_rng", "cuda_rng"} and on_cuda["cuda_rng"][0] == 7


def killed_after(epochs, monkeypatch, variant, train, mixup, device, resume):
    """Run with a resume state, interrupted as a kill would be after `epochs` complete epochs."""
    real, calls = training.evaluate, []

    def evaluate(*args):
        if len(calls) == epochs:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args)
    with monkeypatch.context() as m:
        m.setattr(training, "evaluate", evaluate)
        with pytest.raises(KeyboardInterrupt):
            training.train_variant(variant, train, mixup, device, resume_path=resume)


def test_a_killed_run_resumes_exactly(prepared, monkeypatch, capsys):
    four, resume = {**TRAIN, "epochs": 4}, paths.resume_state("mixup")
    uninterrupted = curve(training.train_variant("mixup", four, MIXUP, CPU)[0])
    killed_after(2, monkeypatch, "mixup", four, MIXUP, CPU, resume)
    rows, _, _, _ = training.train_variant("mixup", four, MIXUP, CPU, resume_path=resume)
    assert "resuming mixup after epoch 2" in capsys.readouterr().out
    assert curve(rows) == uninterrupted


@pytest.mark.parametrize("damage", ["empty", "truncated", "not a resume state", "foreign object"])
def test_an_unreadable_resume_state_is_set_aside_and_training_starts_over(prepared, monkeypatch, capsys, damage):
    four, resume = {**TRAIN, "epochs": 4}, paths.resume_state("mixup")
    uninterrupted = curve(training.train_variant("mixup", four, MIXUP, CPU)[0])
    killed_after(2, monkeypatch, "mixup", four, MIXUP, CPU, resume)
    if damage == "empty":  # a full disk
        resume.write_bytes(b"")
    elif damage == "truncated":  # a machine that crashed while the disk wrote it
        resume.write_bytes(resume.read_bytes()[: resume.stat().st_size // 2])
    elif damage == "not a resume state":
        torch.save([1, 2, 3], resume)
    else:  # a pickle naming a function: torch.load(weights_only=True) refuses it
        torch.save({"fingerprint": "x", "hook": shutil.rmtree}, resume)
    capsys.readouterr()
    rows, _, _, _ = training.train_variant("mixup", four, MIXUP, CPU, resume_path=resume)
    out = capsys.readouterr().out
    assert f"{resume} is unreadable" in out and "training starts from the beginning" in out
    assert resume.with_name("mixup.pt.unreadable").is_file()
    assert curve(rows) == uninterrupted
