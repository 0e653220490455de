"""Variants as data, through DVC: CutMix turned on by one command, the optimizer swapped in its one function;
each on a finished tiny project. (A user's own variant, by the README's steps: tests/pipeline/test_readme.py.)"""
import json

from lenet_mixup.params import read_yaml
from tests.helpers import ran


def params_yaml(project):
    return read_yaml(project.read("params.yaml"))


def shown_metrics(project):
    return next(iter(json.loads(project.dvc("metrics", "show", "--json").stdout).values()))["data"]


def plot_rows(project, chart="Eval accuracy"):
    """The rows `dvc plots show` draws in one chart, each with its variant and colour."""
    shown = json.loads(project.dvc("plots", "show", "--json").stdout)
    return shown["data"][chart][0]["content"]["data"]["values"]


def test_cutmix_is_turned_on_by_one_command_and_the_others_are_not_rerun(finished_project):
    project = finished_project
    out = project.dvc("exp", "run", "-S", "variants=[baseline,mixup,cutmix]").stdout
    assert ran(out) == ["train@cutmix", "evaluate@cutmix", "examples@cutmix", "compare"]
    for kept in ("train@baseline", "train@mixup", "evaluate@baseline", "evaluate@mixup"):
        assert f"Stage '{kept}' didn't change, skipping" in out
    assert "cutmix epoch 2/2 (mixed)" in out
    summary = json.loads(project.read("metrics/cutmix/summary.json"))
    assert summary["mixed_epochs"] == 1 and "metrics/cutmix/evaluation.json" in json.dumps(shown_metrics(project))
    assert "| metric | baseline | mixup | cutmix | mixup - baseline | cutmix - baseline | best |" in \
        project.read("results/comparison.md")
    colours = {(r["variant"], r["color"]) for r in plot_rows(project)}
    assert len(colours) == 3 == len({c for _, c in colours}) and ("baseline", "#1f77b4") in colours
    assert project.run("git", "diff", "HEAD", "params.yaml").stdout.count("\n+- cutmix") == 1
    assert json.loads(project.dvc("status", "--json").stdout) == {}


def test_the_optimizer_is_changed_in_its_one_function_and_a_stage_trains_with_it(finished_project):
    project = finished_project
    optim = project.path / "lenet_mixup/optim.py"
    text = optim.read_text()
    body = text[text.index("    return torch.optim.Adam("):]
    optim.write_text(text.replace(body, "    return torch.optim.SGD(model.parameters(), lr=train[\"lr\"] * 10, "
                                        "momentum=0.9)\n"))
    before = project.read("metrics/baseline/epochs.tsv")
    out = project.dvc("repro", "train@baseline").stdout
    assert ran(out) == ["train@baseline"]
    after = project.read("metrics/baseline/epochs.tsv")
    assert after != before and len(after.splitlines()) == 3
    assert params_yaml(project)["variants"] == ["baseline", "mixup"]
