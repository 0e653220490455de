"""Fault tolerance through the real stages and DVC: kills resume, NaNs stop, nothing half-written."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from lenet_mixup.metrics import read_tsv
from tests.conftest import default_sigint, dvc_env, new_project

TIMING = ("seconds", "examples_per_sec")


def learning_curve(project, variant):
    return [{k: v for k, v in row.items() if k not in TIMING}
            for row in read_tsv(project.path / f"metrics/{variant}/epochs.tsv")]


KILL_EPOCHS = 12  # of 5 steps, each with an evaluation and a resume state saved: over 0.1 s each


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_archive):
    """The baseline's learning curve trained without interruption, for KILL_EPOCHS epochs."""
    project = new_project(tmp_path_factory.mktemp("uninterrupted") / "project", tiny_archive)
    project.set_params(train={"epochs": KILL_EPOCHS})
    project.dvc("repro", "train_baseline")
    return learning_curve(project, "baseline")


def interrupt_training(project, sig):
    """`dvc repro --force train_baseline`, hit by `sig` somewhere after its first epoch; returns its output.

    The kill lands up to 0.2 s after the first resume state appears, mid-run, unless this process was kept
    off the cores for the rest of the run (a loaded machine): then the run finished, and it is tried again."""
    resume = project.path / "data/resume/baseline.pt"
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--force", "train_baseline"],
                                cwd=project.path, env=dvc_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=default_sigint)
        while not resume.exists() and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(random.uniform(0, 0.2))  # somewhere inside a later epoch
        os.killpg(proc.pid, sig)  # the whole process group, as a terminal's Ctrl-C or a power loss would
        output = proc.communicate(timeout=300)[0].decode()
        if proc.returncode != 0:
            return output
    raise AssertionError(f"the run was never interrupted:\n{output[-2000:]}")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_killed_training_resumes_with_the_metrics_of_an_uninterrupted_run(project, sig, uninterrupted):
    project.set_params(train={"epochs": KILL_EPOCHS})
    project.dvc("repro", "prepare")
    resume = project.path / "data/resume/baseline.pt"
    interrupt_training(project, sig)
    assert resume.exists()
    assert not (project.path / "metrics/baseline/epochs.tsv").exists()  # nothing half-written
    resumed = project.dvc("repro", "train_baseline")
    assert "resuming baseline after epoch" in resumed.stdout
    assert not resume.exists()
    assert learning_curve(project, "baseline") == uninterrupted


def test_an_empty_resume_state_is_set_aside_not_a_dead_end(project):
    """A zero-byte state (a full disk) made every later run fail until someone deleted it."""
    project.dvc("repro", "prepare")
    resume = project.path / "data/resume/baseline.pt"
    resume.parent.mkdir(parents=True)
    resume.write_bytes(b"")
    result = project.dvc("repro", "train_baseline")
    assert "data/resume/baseline.pt is unreadable" in result.stdout
    assert "moved it to data/resume/baseline.pt.unreadable, training starts from the beginning" in result.stdout
    assert (project.path / "metrics/baseline/summary.json").is_file()


def test_resume_state_from_other_params_is_ignored(project):
    project.set_params(train={"epochs": KILL_EPOCHS})
    project.dvc("repro", "prepare")
    interrupt_training(project, signal.SIGKILL)
    project.set_params(train={"epochs": KILL_EPOCHS, "lr": 0.002})
    result = project.dvc("repro", "train_baseline")
    assert "ignoring data/resume/baseline.pt: it was written for other params, device, code or data" in result.stdout
    assert "resuming" not in result.stdout


def test_diverging_loss_stops_the_stage_with_a_clear_error(project):
    project.set_params(train={"lr": 1e6, "epochs": 3})
    result = project.dvc("repro", "train_baseline", check=False)
    assert result.returncode != 0
    assert "the training loss became" in result.stderr and "lower train.lr (now 1000000.0)" in result.stderr
    assert not (project.path / "metrics/baseline/epochs.tsv").exists()
    assert not (project.path / "models/baseline/final.pt").exists()


def test_missing_prepared_labels_are_reported(project):
    project.dvc("repro", "prepare")
    (project.path / "data/prepared/train_y.npy").unlink()
    result = project.run(sys.executable, "-m", "stages.train", "baseline", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "data/prepared/train_y.npy is missing: run `dvc repro prepare`" in result.stderr


def test_prepared_arrays_that_disagree_are_reported(project):
    import numpy as np
    project.dvc("repro", "prepare")
    labels = project.path / "data/prepared/eval_y.npy"
    np.save(labels, np.load(labels)[:-1])
    result = project.run(sys.executable, "-m", "stages.train", "baseline", check=False)
    assert result.returncode == 1
    assert "expected 100 int64 labels in 0..9 to match 100 images" in result.stderr
