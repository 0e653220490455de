"""Fault tolerance through the real stages and DVC: kills resume, NaNs stop, nothing half-written."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import default_sigint, dvc_env, learning_curve, new_project

KILL_EPOCHS = 12  # of 5 steps, each with an evaluation and a resume state saved: over 0.1 s each


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_archive):
    """The baseline's learning curve trained without interruption, for KILL_EPOCHS epochs."""
    project = new_project(tmp_path_factory.mktemp("uninterrupted") / "project", tiny_archive)
    project.set_params(train={"epochs": KILL_EPOCHS})
    project.dvc("repro", "train@baseline")
    return learning_curve(project, "baseline"), final_summary(project)


def final_summary(project):
    """summary.json less what says how fast, not what: the timing and the workers."""
    summary = json.loads((project.path / "metrics/baseline/summary.json").read_text())
    return {k: v for k, v in summary.items() if k not in ("train_seconds", "examples_per_sec", "workers")}


def interrupt_training(project, sig):
    """`dvc repro --force train@baseline`, hit by `sig` somewhere after its first epoch; returns its output.

    The kill lands up to 0.2 s after the first resume state appears, mid-run, unless this process was kept
    off the cores for the rest of the run (a loaded machine): then the run finished, and it is tried again."""
    resume = project.path / "data/resume/baseline.pt"
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--force", "train@baseline"],
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
    # What the killed run left: whole files, the epochs it finished (the live ones; the summary is written
    # second, so a kill between the two leaves it an epoch behind), nothing half-written
    if (project.path / "metrics/baseline/summary.json").exists():  # else killed before its first publish
        done = len(learning_curve(project, "baseline"))
        assert 1 <= done < KILL_EPOCHS
        assert done - 1 <= json.loads(project.read("metrics/baseline/summary.json"))["epochs_done"] <= done
    assert not list((project.path / "metrics").rglob(".*.tmp*"))
    resumed = project.dvc("repro", "train@baseline")
    assert "resuming baseline after epoch" in resumed.stdout
    assert not resume.exists()
    # The final files are those of an uninterrupted run, timing aside
    assert (learning_curve(project, "baseline"), final_summary(project)) == uninterrupted


def test_an_empty_resume_state_is_set_aside_not_a_dead_end(project):
    """A zero-byte state (a full disk) made every later run fail until someone deleted it."""
    project.dvc("repro", "prepare")
    resume = project.path / "data/resume/baseline.pt"
    resume.parent.mkdir(parents=True)
    resume.write_bytes(b"")
    result = project.dvc("repro", "train@baseline")
    assert "data/resume/baseline.pt is unreadable" in result.stdout
    assert "moved it to data/resume/baseline.pt.unreadable, training starts from the beginning" in result.stdout
    assert (project.path / "metrics/baseline/summary.json").is_file()


def test_resume_state_from_other_params_is_ignored(project):
    project.set_params(train={"epochs": KILL_EPOCHS})
    project.dvc("repro", "prepare")
    interrupt_training(project, signal.SIGKILL)
    project.set_params(train={"epochs": KILL_EPOCHS, "lr": 0.002})
    result = project.dvc("repro", "train@baseline")
    assert "ignoring data/resume/baseline.pt: it was written for other params, device, code or data" in result.stdout
    assert "resuming" not in result.stdout


def test_diverging_loss_stops_the_stage_with_a_clear_error(project):
    project.set_params(train={"lr": 1e6, "epochs": 3})
    result = project.dvc("repro", "train@baseline", check=False)
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
