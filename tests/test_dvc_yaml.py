"""dvc.yaml against the code: each stage depends on exactly the project modules its command imports,
and every stage can enter DVC's run-cache."""
import ast
import re

import pytest

from lenet_mixup.params import read_yaml
from tests.conftest import ROOT

PIPELINE = read_yaml((ROOT / "dvc.yaml").read_text())["stages"]
PACKAGES = ("stages", "lenet_mixup")


def module_file(name):
    path = ROOT / (name.replace(".", "/") + ".py")
    return path if path.is_file() else None


def imported_modules(path):
    """The project modules a file imports, anywhere in it (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from lenet_mixup import paths` imports a module; `from lenet_mixup.x import f`, a name in x
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PACKAGES and module_file(n)}
    return found


def closure(module):
    """Every project file that `python -m <module>` loads, the package __init__ files aside."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(imported_modules(module_file(name)))
    return {module_file(name).relative_to(ROOT).as_posix() for name in seen}


@pytest.mark.parametrize("stage", list(PIPELINE))
def test_every_imported_project_module_is_a_dependency(stage):
    module = re.fullmatch(r"python -m (\S+)(?: \w+)?", PIPELINE[stage]["cmd"]).group(1)
    declared = {d for d in PIPELINE[stage]["deps"] if d.endswith(".py")}
    assert declared == closure(module), f"{stage}: deps in dvc.yaml differ from what `{PIPELINE[stage]['cmd']}` imports"


def test_package_init_files_import_nothing():
    """They load with every module but are no stage's dependency, so they must hold no code."""
    for package in PACKAGES:
        tree = ast.parse((ROOT / package / "__init__.py").read_text())
        assert all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in tree.body), package


@pytest.mark.parametrize("stage", list(PIPELINE))
def test_every_output_is_in_dvcs_cache(stage):
    """DVC saves no run-cache entry for a stage with a `cache: false` output that is not a metric or a plot
    (dvc/stage/__init__.py, Stage.run), and `dvc push --run-cache` carries no `cache: false` output at all,
    so another machine could not restore such a stage: every output of every stage is cached."""
    for kind in ("outs", "metrics", "plots"):
        for out in PIPELINE[stage].get(kind, []):
            if isinstance(out, dict):
                (path, props), = out.items()
                assert (props or {}).get("cache", True), f"{stage}: {path} has cache: false"


# The data each stage's command reads (lenet_mixup/paths.py names them): each must be a dependency.
READS = {
    "prepare": ["data/raw/cifar-10-python.tar.gz"],
    "train_baseline": ["data/prepared"], "train_mixup": ["data/prepared"],
    "evaluate_baseline": ["data/prepared", "models/baseline"], "evaluate_mixup": ["data/prepared", "models/mixup"],
    "mixup_examples": ["data/prepared"],
    "compare": [f"metrics/{v}/{f}" for v in ("baseline", "mixup")
                for f in ("epochs.tsv", "evaluation.json", "fgsm.tsv", "reliability.tsv")],
}


@pytest.mark.parametrize("stage", list(READS))
def test_every_input_a_stage_reads_is_a_dependency(stage):
    assert set(READS[stage]) <= set(PIPELINE[stage]["deps"])
    assert {d for d in PIPELINE[stage]["deps"] if not d.endswith(".py")} <= set(READS[stage]) | {"requirements.txt"}
