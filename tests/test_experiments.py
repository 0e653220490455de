"""DVC experiments on tiny data: evaluate-only reruns, the run-cache across experiments and clones."""
import json
import subprocess
import sys
import time

from tests.conftest import ROOT, Project
from tests.test_pipeline import ran
from tests.test_sweep import by_alpha_seed


def test_evaluate_params_rerun_only_evaluation_and_comparison(finished_project):
    project = finished_project
    before = json.loads(project.read("metrics/mixup/evaluation.json"))
    result = project.dvc("exp", "run", "-S", "evaluate.fgsm_eps_255=[1,16]", "-S", "evaluate.ece_bins=10")
    assert ran(result) == ["evaluate_baseline", "evaluate_mixup", "compare"]
    after = json.loads(project.read("metrics/mixup/evaluation.json"))
    assert list(after["final"]["fgsm_acc"]) == ["1/255", "16/255"]
    assert after["final"]["fgsm_acc"]["1/255"] == before["final"]["fgsm_acc"]["1/255"]
    assert "FGSM accuracy at 16/255" in project.read("metrics/comparison.md")


def wait_for_queue(project, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = project.dvc("queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            return status
        time.sleep(2)
    raise AssertionError(f"the queue did not finish:\n{status}")


def test_queued_alpha_and_seed_sweep_trains_each_baseline_once_then_report(finished_project):
    """Alpha does not touch the baseline: over a 2 x 2 sweep, seed 0's baseline (committed) never trains
    and seed 1's trains once, the second time restored from DVC's run-cache."""
    project = finished_project
    project.dvc("exp", "run", "--queue", "-S", "mixup.alpha=0.2,0.4", "-S", "train.seed=0,1")
    project.dvc("queue", "start", "-j", "1")
    status = wait_for_queue(project)
    assert status.count("Success") == 4, status
    names = [line.split()[1] for line in status.splitlines() if "Success" in line]
    logs = [project.dvc("queue", "logs", name).stdout for name in names]
    assert sum("Running stage 'train_baseline'" in log for log in logs) == 1, "the baseline retrained"
    assert sum("Stage 'train_baseline' is cached - skipping run" in log for log in logs) == 1
    assert sum("Running stage 'train_mixup'" in log for log in logs) == 4

    shown = json.loads(project.dvc("exp", "show", "--json").stdout)
    found = by_alpha_seed(shown)
    assert {(0.2, 0), (0.2, 1), (0.4, 0), (0.4, 1)} <= set(found)
    finals = {key: run["mixup"]["summary"]["final_eval_acc"] for key, run in found.items()}
    assert len({finals[(0.2, 0)], finals[(0.4, 0)], finals[(0.2, 1)]}) == 3  # distinct runs, distinct metrics
    assert found[(0.2, 0)]["baseline"] == found[(0.4, 0)]["baseline"]  # the same seed, the same baseline
    assert found[(0.2, 1)]["baseline"] == found[(0.4, 1)]["baseline"]
    assert found[(0.2, 0)]["baseline"] != found[(0.2, 1)]["baseline"]
    result = project.run(sys.executable, "-m", "tools.report", "--claims", str(ROOT / "study/claims.yaml"))
    assert project.read("reports/report.md") in result.stdout
    assert "| mixup alpha=0.2 | 2: 0, 1 |" in result.stdout and "| baseline | 2: 0, 1 |" in result.stdout
    assert (project.path / "reports/report.png").read_bytes()[:4] == b"\x89PNG"


def test_a_clone_that_pulled_the_run_cache_reruns_nothing(finished_project, tmp_path):
    """Results computed on one machine (here alpha 0.4) are restored, not recomputed, on another."""
    project = finished_project
    project.dvc("remote", "add", "-d", "shared", str(tmp_path / "remote"))
    project.commit("shared remote")
    project.dvc("push", "--run-cache")  # the committed results
    project.dvc("exp", "run", "-S", "mixup.alpha=0.4")
    project.dvc("push", "--run-cache")  # and what the experiment computed
    clone = Project(tmp_path / "clone")
    subprocess.run(["git", "clone", "-q", str(project.path), str(clone.path)], check=True)
    clone.dvc("pull", "--run-cache")
    assert (clone.path / "models/mixup/final.pt").is_file()
    result = clone.dvc("repro")
    assert ran(result) == [] and "Data and pipelines are up to date" in result.stdout
    exp = clone.dvc("exp", "run", "--pull", "-S", "mixup.alpha=0.4")  # --pull: what the run-cache restores
    assert ran(exp) == [], exp.stdout
    for stage in ("train_mixup", "evaluate_mixup", "mixup_examples", "compare"):
        assert f"Stage '{stage}' is cached - skipping run" in exp.stdout
    assert clone.read("metrics/mixup/summary.json") == project.read("metrics/mixup/summary.json")
