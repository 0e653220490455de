"""DVC experiments on tiny data: evaluate-only reruns, the queue and the run-cache across experiments."""
import json
import shutil

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


def test_a_queued_alpha_sweep_never_trains_the_baseline_and_gives_the_bits_of_exp_run(finished_project, tmp_path):
    """Alpha does not touch the baseline: two queued runs of other alphas restore the committed baseline
    from DVC's run-cache and train only mixup. The queue's runs give the bits `dvc exp run` gives (its
    workers run beside other DVC processes; the results must not depend on that)."""
    alone = Project(tmp_path / "alone")
    shutil.copytree(finished_project.path, alone.path, symlinks=True)
    project = finished_project
    project.dvc("exp", "run", "--queue", "-S", "mixup.alpha=0.2,0.4")
    project.dvc("exp", "run", "--run-all", "-j", "1")  # the queue's workers, waited for (no polling)
    status = project.dvc("queue", "status").stdout
    assert status.count("Success") == 2, status
    names = [line.split()[1] for line in status.splitlines() if "Success" in line]
    logs = [project.dvc("queue", "logs", name).stdout for name in names]
    assert not any("Running stage 'train_baseline'" in log for log in logs), "the baseline retrained"
    assert sum("Running stage 'train_mixup'" in log for log in logs) == 2

    alone.dvc("exp", "run", "-S", "mixup.alpha=0.4")
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
