"""A training run seen while it runs: its per-epoch files rewritten after every epoch, atomically, through
DVC's own views (`dvc exp show`, `dvc plots show`, `dvc plots diff`) in the workspace and under the queue,
and the step signal DVC's VS Code extension watches."""
import json
import shutil
import subprocess
import sys
import threading
import time

import pytest

from lenet_mixup import live, paths
from lenet_mixup.metrics import COLUMNS
from tests.helpers import Project, dvc_env, new_project, synthetic_split, write_archive

EPOCHS = 16  # of 2,500 images: long enough for several looks at a run in progress, a few seconds


@pytest.fixture(scope="module")
def slow_project(tmp_path_factory):
    """A project on 2,500 training images, prepared and committed, nothing trained yet."""
    folder = tmp_path_factory.mktemp("live")
    archive = folder / "cifar-10-python.tar.gz"
    md5 = write_archive(archive, train=synthetic_split(2500, 0))
    project = new_project(folder / "project", (archive, md5))
    project.set_params(train={"epochs": EPOCHS})
    project.dvc("repro", "prepare")
    project.commit("prepared")
    return project


def copy_of(project, tmp_path):
    shutil.copytree(project.path, tmp_path / "project", symlinks=True)
    return Project(tmp_path / "project")


def epochs_done(shown, name=None):
    """The baseline's epochs_done in `dvc exp show --json`: the workspace's row, or experiment `name`'s."""
    for row in shown:
        revs = [row] if name is None else [r for e in row.get("experiments") or [] for r in e.get("revs") or []
                                           if r.get("name") == name]
        for rev in revs:
            if name is not None or rev.get("rev") == "workspace":
                metrics = ((rev.get("data") or {}).get("metrics") or {})
                return ((metrics.get("metrics/baseline/summary.json") or {}).get("data") or {}).get("epochs_done")
    return None


def partial_rows(shown):
    """The rows of the baseline's live chart in `dvc plots show/diff --json`, if it holds fewer than all."""
    charts = shown.get("data", {}).get("metrics/baseline/epochs.tsv") or []
    rows = [v for chart in charts for v in chart["content"]["data"]["values"]]
    return rows if 0 < len(rows) < EPOCHS else None


def watch(project, running, look):
    """Call look() until `running` (a Popen) ends; return what it returned each time, None aside."""
    seen = []
    while running.poll() is None:
        found = look()
        if found is not None:
            seen.append(found)
    return seen


def test_a_workspace_run_is_seen_epoch_by_epoch_and_every_read_is_whole(slow_project, tmp_path):
    project = copy_of(slow_project, tmp_path)
    tsv, summary = project.path / paths.epochs_tsv("baseline"), project.path / paths.summary_json("baseline")
    reads, broken, stop = [], [], threading.Event()

    def reader():  # polls both files for the whole run, each read a whole file or an error
        while not stop.wait(0.002):
            try:
                rows = tsv.read_text().splitlines()
                data = json.loads(summary.read_text())
            except FileNotFoundError:
                continue
            except ValueError as e:
                broken.append(str(e))
                continue
            if rows[0].split("\t") != COLUMNS or any(len(r.split("\t")) != len(COLUMNS) for r in rows[1:]) \
                    or not 1 <= data.get("epochs_done", EPOCHS) <= EPOCHS:
                broken.append(f"{len(rows) - 1} rows, summary {data}")
            reads.append((len(rows) - 1, data.get("epochs_done", EPOCHS)))
    thread = threading.Thread(target=reader)
    thread.start()
    run = subprocess.Popen([sys.executable, "-m", "dvc", "exp", "run", "train@baseline"], cwd=project.path,
                           env=dvc_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = watch(project, run, lambda: epochs_done(json.loads(project.dvc("exp", "show", "--json").stdout)))
    plots = watch(project, run, lambda: partial_rows(json.loads(project.dvc("plots", "show", "--json").stdout))) \
        if run.poll() is None else []
    stop.set()
    thread.join()
    assert run.wait() == 0, run.stdout.read()
    assert len(set(done)) >= 2 and done == sorted(done), f"dvc exp show saw epochs {done}"
    assert not broken and len(reads) > 20, (broken[:5], len(reads))
    for column in (0, 1):  # each file only ever grows
        counts = [r[column] for r in reads]
        assert counts == sorted(counts) and counts[-1] == EPOCHS
    assert plots or len(set(done)) >= 2  # the plots were looked at only if the run was still going
    final = json.loads(summary.read_text())
    assert "epochs_done" not in final and "epochs_total" not in final  # what an uninterrupted run always wrote
    assert not (project.path / live.SIGNAL).exists()


def test_a_queued_run_is_seen_through_exp_show_and_plots_diff(slow_project, tmp_path):
    project = copy_of(slow_project, tmp_path)
    project.dvc("exp", "run", "--queue", "-n", "watched", "train@baseline")
    worker = subprocess.Popen([sys.executable, "-m", "dvc", "queue", "start"], cwd=project.path, env=dvc_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    assert worker.wait() == 0
    deadline, done, plots = time.time() + 300, [], []
    while time.time() < deadline and "Success" not in project.queue_status():
        shown = epochs_done(json.loads(project.dvc("exp", "show", "--json").stdout), "watched")
        if shown is not None:
            done.append(shown)
            rows = partial_rows(json.loads(project.dvc("plots", "diff", "watched", "--json").stdout))
            if rows:
                plots.append(len(rows))
    assert "Success" in project.queue_status()
    assert len(set(done)) >= 2 and done == sorted(done), f"dvc exp show saw epochs {done} of the queued run"
    assert plots, "dvc plots diff never showed the running experiment's rows"
