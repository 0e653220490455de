"""dvc.yaml against the code: each stage depends on exactly the project modules its command imports (its
own variant's module and no other's), reads the data it declares, and can enter DVC's run-cache. The
stages are taken as DVC resolves them, with every variant of the registry listed in params.yaml."""
import ast
import re
import subprocess

import pytest
from dvc.repo import Repo
from dvc.stage.serialize import to_pipeline_file

from lenet_mixup import variant
from tests.helpers import ROOT, copy_project_files, project_params

PACKAGES = ("stages", "lenet_mixup")
VARIANTS = variant.available()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """{stage name: its definition as DVC resolves it} for a project listing every variant."""
    path = tmp_path_factory.mktemp("resolved")
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    Repo.init(path).close()
    copy_project_files(path)
    (path / "params.yaml").write_text(project_params(variants=VARIANTS))
    with Repo(path) as repo:
        return {stage.name: next(iter(to_pipeline_file(stage).values())) for stage in repo.index.stages}


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


def closure(*modules):
    """Every project file that loads with these modules, the package __init__ files aside."""
    seen, todo = set(), list(modules)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(imported_modules(module_file(name)))
    return {module_file(name).relative_to(ROOT).as_posix() for name in seen}


def loads_a_variant(path):
    """Whether a file calls variant.load(...), which imports a variant's module by its name."""
    return any(isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
               and isinstance(node.func.value, ast.Name) and node.func.value.id == "variant"
               for node in ast.walk(ast.parse(path.read_text())))


def loaded_by(cmd):
    """What `python -m stages.X [VARIANT]` loads: its imports and, where the stage loads its variant, that
    variant's module (and what that imports)."""
    module, argument = re.fullmatch(r"python -m (\S+)(?: (\w+))?", cmd).groups()
    files = closure(module)
    if argument and loads_a_variant(module_file(module)):
        files |= closure(f"lenet_mixup.variants.{argument}")
    return files


def test_every_variant_has_each_per_variant_stage(pipeline):
    for kind in ("train", "evaluate", "examples"):
        assert {name for name in pipeline if name.startswith(f"{kind}@")} == {f"{kind}@{v}" for v in VARIANTS}


def test_every_imported_project_module_is_a_dependency(pipeline):
    for name, stage in pipeline.items():
        declared = {d for d in stage.get("deps", []) if d.endswith(".py")}
        assert declared == loaded_by(stage["cmd"]), f"{name}: deps differ from what `{stage['cmd']}` imports"


def test_a_variants_stages_depend_on_its_own_module_and_params_only(pipeline):
    """So that adding or changing a variant reruns nothing of the others."""
    for v in VARIANTS:
        others = {variant.source(o).as_posix() for o in VARIANTS if o != v}
        for kind in ("train", "evaluate", "examples"):
            stage = pipeline[f"{kind}@{v}"]
            assert not others & set(stage.get("deps", [])), f"{kind}@{v} depends on another variant's code"
            assert not set(VARIANTS) - {v} & set(stage.get("params", [])), f"{kind}@{v} reads another variant's params"
    assert "baseline" in pipeline["train@baseline"]["params"] and "mixup" not in pipeline["train@baseline"]["params"]


def test_package_init_files_import_nothing():
    """They load with every module but are no stage's dependency, so they must hold no code."""
    for init in [ROOT / p / "__init__.py" for p in PACKAGES] + [ROOT / "lenet_mixup/variants/__init__.py"]:
        tree = ast.parse(init.read_text())
        assert all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in tree.body), init


def test_every_output_is_in_dvcs_cache(pipeline):
    """DVC saves no run-cache entry for a stage with a `cache: false` output that is not a metric or a plot
    (dvc/stage/__init__.py, Stage.run), and `dvc push --run-cache` carries no `cache: false` output at all,
    so another machine could not restore such a stage: every output of every stage is cached."""
    for name, stage in pipeline.items():
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind, []):
                if isinstance(out, dict):
                    (path, props), = out.items()
                    assert (props or {}).get("cache", True), f"{name}: {path} has cache: false"


def reads(name):
    """The data a stage's command reads (lenet_mixup/paths.py names them), by stage."""
    kind, _, v = name.partition("@")
    return {"prepare": ["data/raw/cifar-10-python.tar.gz"], "train": ["data/prepared"],
            "evaluate": ["data/prepared", f"models/{v}"], "examples": ["data/prepared"],
            "compare": ["metrics"]}.get(kind, [])


def test_every_input_a_stage_reads_is_a_dependency(pipeline):
    for name, stage in pipeline.items():
        data = {d for d in stage.get("deps", []) if not d.endswith(".py")}
        assert set(reads(name)) <= data and data <= set(reads(name)) | {"requirements.txt"}, name
