"""The training loop's own behaviour, run in-process on tiny prepared data."""
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from lenet_mixup import evaluation, paths, steps, training, variant
from lenet_mixup.data import load_split
from lenet_mixup.evaluation import evaluate
from lenet_mixup.model import lenet
from lenet_mixup.stage import UserError
from tests.helpers import ROOT, TEST_PARAMS, curve, dvc_env, killed_after, project_params

TRAIN = {**TEST_PARAMS["train"], "device": "cpu"}
MIXUP = {"alpha": 1.0, "warmup": 1}
CPU = torch.device("cpu")
WARMUP_1 = {"mixup": MIXUP, "cutmix": MIXUP, "crop_flip": {"padding": 4, "flip": 0.5, "warmup": 1}}


def test_prepare_writes_normalized_nchw_arrays(prepared):
    import numpy as np
    x = np.load(paths.prepared_file("train_x"), mmap_mode="r")
    assert x.shape == (250, 3, 32, 32) and x.dtype == np.float32
    assert x.min() == 0 and x.max() == 1
    assert np.load(paths.prepared_file("eval_y")).dtype == np.int64


@pytest.mark.parametrize("name", WARMUP_1)
def test_a_draw_per_batch_only_after_warmup_and_the_log_says_what_the_variant_did(prepared, monkeypatch, capsys,
                                                                                  name):
    module, drawn = variant.load(name), []
    real = module.draw

    def spy(params, shape, device):
        drawn.append((params, tuple(shape)))
        return real(params, shape, device)
    monkeypatch.setattr(module, "draw", spy)
    rows, _, _, run = training.train_variant(name, {**TRAIN, "epochs": 3}, WARMUP_1[name], CPU)
    assert drawn == [(WARMUP_1[name], (50, 3, 32, 32))] * 10  # 250 images / batch 50: a draw per step, epochs 2-3
    assert len(rows) == 3 and run[variant.epochs_key(module)] == 2
    log = capsys.readouterr().out
    assert f"{name} epoch 1/3:" in log and f"{name} epoch 3/3 ({module.ACTION}):" in log


def test_baseline_never_draws(prepared, monkeypatch):
    monkeypatch.setattr(variant.load("baseline"), "draw", lambda *a: pytest.fail("baseline drew"))
    assert training.train_variant("baseline", TRAIN, {}, CPU)[3] == {"train_path": "cpu"}


@pytest.mark.parametrize("name", WARMUP_1)
def test_a_run_that_never_transforms_says_so_in_the_variant_s_words(prepared, capsys, name):
    """warmup 1 and one epoch: the run trains what the baseline trains, and its log and summary say so."""
    module = variant.load(name)
    rows, _, _, run = training.train_variant(name, {**TRAIN, "epochs": 1}, WARMUP_1[name], CPU)
    assert run[variant.epochs_key(module)] == 0
    assert f"warning: no batch of {name} is {module.ACTION} in this run" in capsys.readouterr().out
    assert curve(rows) == curve(training.train_variant("baseline", {**TRAIN, "epochs": 1}, {}, CPU)[0])


def test_evaluation_is_plain_cross_entropy_over_several_eval_batches(prepared, monkeypatch):
    monkeypatch.setattr(evaluation, "EVAL_CHUNK", 30)  # 100 eval images: batches of 30, 30, 30 and 10
    x, y = load_split("eval", CPU)
    model = lenet()
    loss, acc = evaluate(model, x, y)
    with torch.no_grad():
        logits = model(x)
    assert loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert acc == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert evaluation.predict(model, x).shape == (100, 10)


def test_best_checkpoint_holds_the_lowest_eval_loss_weights(prepared, monkeypatch):
    def adam(model, train, device):  # pinned here, whatever make_optimizer builds: the tutorial's Adam at lr 0.01
        return torch.optim.Adam(model.parameters(), lr=train["lr"], betas=(0.9, 0.999), eps=1e-7, fused=True)
    monkeypatch.setattr(steps, "make_optimizer", adam)
    rows, best, final, _ = training.train_variant("baseline", {**TRAIN, "epochs": 8, "lr": 0.01}, {}, CPU)
    losses = [r["eval_loss"] for r in rows]
    assert best["epoch"] == losses.index(min(losses)) + 1 != len(rows)  # lr 0.01 over-fits: not the last epoch
    x, y = load_split("eval", CPU)
    for checkpoint, row in ((best, rows[best["epoch"] - 1]), (final, rows[-1])):
        model = lenet().to(memory_format=torch.channels_last)
        model.load_state_dict(checkpoint["model"])
        assert evaluate(model, x, y) == (row["eval_loss"], row["eval_acc"])


@pytest.mark.parametrize("name", WARMUP_1)
def test_a_warmup_epoch_equals_the_baseline_and_the_transform_then_departs(prepared, name):
    """With warmup 1 the first epoch is plain training: the variants agree exactly there, and not after."""
    base, _, _, _ = training.train_variant("baseline", {**TRAIN, "epochs": 2}, {}, CPU)
    transformed, _, _, _ = training.train_variant(name, {**TRAIN, "epochs": 2}, WARMUP_1[name], CPU)
    assert curve(base)[0] == curve(transformed)[0] and curve(base)[1] != curve(transformed)[1]


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
    assert training.train_variant("baseline", {**TRAIN, "epochs": 1}, {}, CPU)[3] == {"train_path": "cpu"}


def test_the_stages_without_a_model_import_no_torch(prepared):
    """A stage's start-up is mostly imports, torch's about 2 s: the stages that need no model never pay it,
    and neither does the params check every stage makes (lenet_mixup/variant.py loads no variant to list them)."""
    (prepared / "params.yaml").write_text(project_params(train={"epochs": 1}))
    script = ("import sys, stages.download, stages.prepare, stages.compare, stages.plots_page\n"
              "from lenet_mixup.params import load_params\nload_params('data', 'variants')\n"
              "print('loaded:', [m for m in ('torch',) if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", script], cwd=prepared, env={**dvc_env(), "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "loaded: []", done.stdout + done.stderr


def test_batch_larger_than_training_set_is_refused(prepared):
    with pytest.raises(UserError, match="larger than the 250 training images"):
        training.train_variant("baseline", {**TRAIN, "batch_size": 251}, {}, CPU)


def test_diverging_loss_stops_with_epoch_and_step(prepared):
    with pytest.raises(UserError, match=r"training loss became (nan|inf) at epoch \d+, step \d+ of 5"):
        training.train_variant("baseline", {**TRAIN, "lr": 1e6, "epochs": 3}, {}, CPU)


def test_the_fingerprint_names_the_device_type_that_trains(prepared):
    config = {"variant": "baseline", "train": TRAIN, "params": {}}
    assert training.fingerprint(config, CPU) == training.fingerprint(config, CPU)
    assert training.fingerprint(config, CPU) != training.fingerprint(config, torch.device("cuda"))


def test_the_resume_state_holds_the_generator_of_the_training_device(monkeypatch):
    shuffle = torch.Generator()
    assert set(training.rng_states(shuffle, CPU)) == {"shuffle_rng", "cpu_rng"}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.full((16,), 7, dtype=torch.uint8))
    on_cuda = training.rng_states(shuffle, torch.device("cuda"))
    assert set(on_cuda) == {"shuffle_rng", "cpu_rng", "cuda_rng"} and on_cuda["cuda_rng"][0] == 7


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
