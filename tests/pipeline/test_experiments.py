"""DVC experiments on tiny data: evaluate-only reruns, the queue and the run-cache across experiments."""
import json
import shutil

import pytest

from tests.helpers import Project, ran


@pytest.fixture(scope="module")
def alpha_experiment(tmp_path_factory, finished_template):
    """`dvc exp run -S mixup.alpha=0.4` in a copy of the finished tiny project: (the project, DVC's output)."""
    project = Project(tmp_path_factory.mktemp("alpha") / "project")
    shutil.copytree(finished_template.path, project.path, symlinks=True)
    return project, project.dvc("exp", "run", "-S", "mixup.alpha=0.4").stdout


def test_an_alpha_experiment_reruns_only_mixup_and_dvc_shows_it(alpha_experiment):
    project, out = alpha_experiment
    assert ran(out) == ["train@mixup", "evaluate@mixup", "examples@mixup", "compare"]
    for unchanged in ("train@baseline", "evaluate@baseline", "examples@baseline"):
        assert f"Stage '{unchanged}' didn't change, skipping" in out
    assert json.loads(project.dvc("status", "--json").stdout) == {}

    diff = json.loads(project.dvc("metrics", "diff", "--json").stdout)
    assert "metrics/mixup/summary.json" in diff and "metrics/baseline/summary.json" not in diff
    params = json.loads(project.dvc("params", "diff", "--json").stdout)
    assert params["params.yaml"]["mixup.alpha"]["old"] == 1.0
    assert params["params.yaml"]["mixup.alpha"]["new"] == 0.4
    assert "peak_eval_acc" in json.dumps(json.loads(project.dvc("exp", "show", "--json").stdout))

    project.dvc("plots", "show", "-o", "plots_out")
    html = project.read("plots_out/index.html")
    for name in ("results/epochs.tsv", "Eval accuracy", "Eval loss", "Train loss", "Accuracy under FGSM attack",
                 "Reliability diagram", "Confusion matrix, baseline", "Confusion matrix, mixup"):
        assert name in html


def test_evaluate_params_rerun_only_evaluation_and_comparison(finished_project):
    project = finished_project
    before = json.loads(project.read("metrics/mixup/evaluation.json"))
    result = project.dvc("exp", "run", "-S", "evaluate.fgsm_eps_255=[1,16]", "-S", "evaluate.ece_bins=10")
    assert ran(result) == ["evaluate@baseline", "evaluate@mixup", "compare"]
    after = json.loads(project.read("metrics/mixup/evaluation.json"))
    assert list(after["final"]["fgsm_acc"]) == ["1/255", "16/255"]
    assert after["final"]["fgsm_acc"]["1/255"] == before["final"]["fgsm_acc"]["1/255"]
    assert "FGSM accuracy at 16/255" in project.read("results/comparison.md")


def test_a_queued_alpha_run_never_trains_the_baseline_and_gives_the_bits_of_exp_run(finished_project,
                                                                                    alpha_experiment):
    """Alpha does not touch the baseline: a queued run of another alpha restores the committed baseline from
    DVC's run-cache and trains only mixup. The queue's run gives the bits `dvc exp run` gives (its worker
    runs beside other DVC processes; the results must not depend on that): alpha_experiment's, run in a
    copy of its own, with a cache of its own."""
    alone, _ = alpha_experiment
    project = finished_project
    project.dvc("exp", "run", "--queue", "-S", "mixup.alpha=0.4")
    project.dvc("exp", "run", "--run-all", "-j", "1")  # the queue's worker, waited for (no polling)
    status = project.queue_status()
    assert status.count("Success") == 1, status
    name = next(line.split()[1] for line in status.splitlines() if "Success" in line)
    log = project.dvc("queue", "logs", name).stdout
    assert "Running stage 'train@baseline'" not in log, "the baseline retrained"
    assert "Running stage 'train@mixup'" in log
    queued, = experiments(project)
    assert exp_params(queued)["mixup"]["alpha"] == 0.4
    assert results(queued) == results(experiments(alone)[0])


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
