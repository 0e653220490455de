"""DVC experiments on tiny data: evaluate-only reruns, a remote round trip, a queued sweep."""
import json
import subprocess
import sys
import time

from stages.sweep_report import experiments
from tests.conftest import Project
from tests.test_pipeline import ran


def test_evaluate_params_rerun_only_evaluation_and_comparison(finished_project):
    project = finished_project
    before = json.loads(project.read("metrics/mixup/evaluation.json"))
    result = project.dvc("exp", "run", "-S", "evaluate.fgsm_eps_255=[1,16]", "-S", "evaluate.ece_bins=10")
    assert ran(result) == ["evaluate_baseline", "evaluate_mixup", "compare"]
    after = json.loads(project.read("metrics/mixup/evaluation.json"))
    assert list(after["final"]["fgsm_acc"]) == ["1/255", "16/255"]
    assert after["final"]["fgsm_acc"]["1/255"] == before["final"]["fgsm_acc"]["1/255"]
    assert "FGSM accuracy at 16/255" in project.read("metrics/comparison.md")


def test_remote_round_trip_then_nothing_reruns(finished_project, tmp_path):
    project = finished_project
    project.dvc("remote", "add", "-d", "shared", str(tmp_path / "remote"))
    project.commit("results and remote")
    project.dvc("push", "--run-cache")
    clone = Project(tmp_path / "clone")
    subprocess.run(["git", "clone", "-q", str(project.path), str(clone.path)], check=True)
    clone.dvc("pull")
    assert (clone.path / "models/mixup/final.pt").is_file()
    result = clone.dvc("repro")
    assert ran(result) == [] and "Data and pipelines are up to date" in result.stdout


def test_queued_alpha_and_seed_sweep_then_report(finished_project):
    project = finished_project
    project.dvc("exp", "run", "--queue", "-S", "mixup.alpha=0.2,0.4", "-S", "train.seed=0,1")
    project.dvc("queue", "start", "-j", "2")
    deadline = time.time() + 600
    while time.time() < deadline:
        status = project.dvc("queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    assert status.count("Success") == 4, status
    shown = json.loads(project.dvc("exp", "show", "--json").stdout)
    found = experiments(shown)
    assert {(0.2, 0), (0.2, 1), (0.4, 0), (0.4, 1)} <= set(found)
    finals = {key: run["mixup"]["summary"]["final_eval_acc"] for key, run in found.items()}
    assert len({finals[(0.2, 0)], finals[(0.4, 0)], finals[(0.2, 1)]}) == 3  # distinct runs, distinct metrics
    # The baseline does not depend on alpha: the same seed gives the same baseline.
    assert found[(0.2, 0)]["baseline"] == found[(0.4, 0)]["baseline"]
    assert found[(0.2, 0)]["baseline"] != found[(0.2, 1)]["baseline"]
    result = project.run(sys.executable, "-m", "stages.sweep_report")
    table = project.read("reports/sweep.md")
    assert "alpha 0.2" in table and "(n=2)" in table
    assert (project.path / "reports/sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "from 5 runs" in result.stdout or "from 4 runs" in result.stdout
