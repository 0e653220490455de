"""Variants as data, through DVC: CutMix (per batch) and crop_flip (per image) each turned on by one command, the
optimizer swapped in its one function; each on a finished tiny project. (A user's own variant, by the README's
steps: tests/pipeline/test_readme.py.)"""
import json

import pytest

from lenet_mixup.params import read_yaml
from tests.helpers import ran

# A built-in variant that is off, what its log says of a transformed epoch, and its summary's count of them
# (tiny projects train 2 epochs: CutMix after 1 plain one, crop_flip from the first).
OFF = {"cutmix": ("(mixed)", "mixed_epochs", 1),
       "crop_flip": ("(cropped and flipped)", "cropped_and_flipped_epochs", 2)}


def params_yaml(project):
    return read_yaml(project.read("params.yaml"))


def shown_metrics(project):
    return next(iter(json.loads(project.dvc("metrics", "show", "--json").stdout).values()))["data"]


def plot_rows(project, chart="Eval accuracy"):
    """The rows `dvc plots show` draws in one chart, each with its variant and colour."""
    shown = json.loads(project.dvc("plots", "show", "--json").stdout)
    return shown["data"][chart][0]["content"]["data"]["values"]


@pytest.mark.parametrize("name", OFF)
def test_a_built_in_variant_is_turned_on_by_one_command_and_the_others_are_not_rerun(finished_project, name):
    project, (said, key, epochs) = finished_project, OFF[name]
    out = project.dvc("exp", "run", "-S", f"variants=[baseline,mixup,{name}]").stdout
    assert ran(out) == [f"train@{name}", f"evaluate@{name}", f"examples@{name}", "compare"]
    for kept in ("train@baseline", "train@mixup", "evaluate@baseline", "evaluate@mixup"):
        assert f"Stage '{kept}' didn't change, skipping" in out
    assert f"{name} epoch 2/2 {said}" in out
    summary = json.loads(project.read(f"metrics/{name}/summary.json"))
    assert summary[key] == epochs and f"metrics/{name}/evaluation.json" in json.dumps(shown_metrics(project))
    assert f"| metric | baseline | mixup | {name} | mixup - baseline | {name} - baseline | best |" in \
        project.read("results/comparison.md")
    colours = {(r["variant"], r["color"]) for r in plot_rows(project)}
    assert len(colours) == 3 == len({c for _, c in colours}) and ("baseline", "#1f77b4") in colours
    assert project.run("git", "diff", "HEAD", "params.yaml").stdout.count(f"\n+- {name}") == 1
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
