"""DVC experiments on tiny data: evaluate-only reruns, the queue and the run-cache across experiments."""
import json
import shutil
import time

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


def wait_for_queue(project, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = project.dvc("queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            return status
        time.sleep(2)
    raise AssertionError(f"the queue did not finish:\n{status}")


def test_queued_runs_restore_a_shared_stage_and_give_the_bits_of_exp_run(finished_project, tmp_path):
    """Alpha does not touch the baseline: of two queued runs of seed 1, the first trains seed 1's baseline
    and the second restores it from DVC's run-cache. The queue's runs give the bits `dvc exp run` gives
    (the queue's workers run beside each other's DVC processes; the results must not depend on that)."""
    alone = Project(tmp_path / "alone")
    shutil.copytree(finished_project.path, alone.path, symlinks=True)
    project = finished_project
    project.dvc("exp", "run", "--queue", "-S", "mixup.alpha=0.2,0.4", "-S", "train.seed=1")
    project.dvc("queue", "start", "-j", "1")
    status = wait_for_queue(project)
    assert status.count("Success") == 2, status
    names = [line.split()[1] for line in status.splitlines() if "Success" in line]
    logs = [project.dvc("queue", "logs", name).stdout for name in names]
    assert sum("Running stage 'train_baseline'" in log for log in logs) == 1, "the baseline retrained"
    assert sum("Stage 'train_baseline' is cached - skipping run" in log for log in logs) == 1
    assert sum("Running stage 'train_mixup'" in log for log in logs) == 2

    alone.dvc("exp", "run", "-S", "mixup.alpha=0.4", "-S", "train.seed=1")
    queued = {exp_params(e)["mixup"]["alpha"]: e for e in experiments(project)}
    assert results(queued[0.4]) == results(experiments(alone)[0])
    assert results(queued[0.2])["baseline"] == results(queued[0.4])["baseline"]
    assert results(queued[0.2])["mixup"] != results(queued[0.4])["mixup"]


TIMING = ("train_seconds", "examples_per_sec", "workers")


def experiments(project):
    """The experiments of HEAD, as `dvc exp show --json` gives them (their params and metrics)."""
    shown = json.loads(project.dvc("exp", "show", "--json").stdout)
    return [rev["data"] for entry in shown for exp in entry.get("experiments") or [] for rev in exp.get("revs") or []]


def exp_params(data):
    return data["params"]["params.yaml"]["data"]


def results(data):
    """Both variants' summaries (less the timing and the workers, which say how fast, not what) and evaluations."""
    metrics = {path: m["data"] for path, m in data["metrics"].items()}
    return {v: {"summary": {k: x for k, x in metrics[f"metrics/{v}/summary.json"].items() if k not in TIMING},
                "evaluation": metrics[f"metrics/{v}/evaluation.json"]} for v in ("baseline", "mixup")}
