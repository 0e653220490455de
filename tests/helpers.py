"""What the tests share besides fixtures: the project in a temp git + DVC repo driven through DVC's CLI, pinned
params, and small readers of what runs print and write. Fixtures live in conftest.py."""
import gzip
import io
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from lenet_mixup.synthetic import CLASSES, synthetic_split, write_archive  # noqa: F401 - the tests' archives
from tools.runs import captured

ROOT = Path(__file__).resolve().parents[1]
# What a clone of the project holds that the pipeline needs. Not params.yaml nor .dvc/config: the tests
# write their own (project_params, DVC_CONFIG), so nothing a user did in this workspace reaches a test.
PROJECT_FILES = ["dvc.yaml", "stages", "lenet_mixup", "tools", "requirements.txt", ".dvcignore", ".dvc/plots",
                 ".gitignore", "data/.gitignore", "data/raw/.gitignore", "models/.gitignore", "results/.gitignore",
                 *(p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "metrics").glob("*/.gitignore")))]
# Every value the tests rely on, pinned: a workspace whose params.yaml holds an applied experiment, or
# a commit of other values, runs the tests on these.
TEST_PARAMS = {
    "train": {"epochs": 2, "batch_size": 50, "lr": 0.001, "seed": 0, "device": "auto", "precision": "fp32",
              "steps_per_epoch": None, "validation_steps": None, "shards": 2},
    "baseline": {},
    "mixup": {"alpha": 1.0, "warmup": 1},
    "cutmix": {"alpha": 1.0, "warmup": 1},
    "crop_flip": {"padding": 4, "flip": 0.5, "warmup": 0},
    "evaluate": {"fgsm_eps_255": [1, 2, 4, 8], "ece_bins": 15},
    "variants": ["baseline", "mixup"],
}
# The project's .dvc/config as shipped, without what a user adds to theirs (remotes, above all).
DVC_CONFIG = "[core]\n    analytics = false\n[plots]\n    html_template = ../data/plots-offline.html\n"


def truncate(path, out):
    data = Path(path).read_bytes()
    Path(out).write_bytes(data[: len(data) // 2])
    with gzip.open(out) as f:  # make sure it really is broken
        with pytest.raises(EOFError):
            f.read()
    return out


def default_sigint():
    """preexec_fn: let a child take Ctrl-C as from a terminal, even when pytest itself runs in the
    background (a shell starts background jobs with SIGINT ignored, and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def dvc_env():
    """The environment stage commands run in: this interpreter's `python` first on PATH."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("DVC_ROOT", None)
    return env


class Project:
    """A copy of the pipeline in a fresh git + DVC repository, driven through DVC's own CLI."""

    def __init__(self, path):
        self.path = path

    def run(self, *args, check=True):
        result = captured(args, cwd=self.path, env=dvc_env())
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def dvc(self, *args, check=True):
        return self.run(sys.executable, "-m", "dvc", *args, check=check)

    def queue_status(self, tries=5):
        """`dvc queue status`, asked again where it failed: it reads files the queue's workers write, and on a
        busy machine it sometimes reads one half-written (`Expecting value: line 1 column 1`)."""
        for _ in range(tries - 1):
            result = self.dvc("queue", "status", check=False)
            if result.returncode == 0:
                return result.stdout
            time.sleep(1)
        return self.dvc("queue", "status").stdout

    def set_params(self, **sections):
        """Change params.yaml as `dvc exp run -S` would: round trip, the comments kept."""
        yaml = YAML()
        params = yaml.load((self.path / "params.yaml").read_text())
        for section, values in sections.items():
            params.setdefault(section, {}).update(values)
        out = io.StringIO()
        yaml.dump(params, out)
        (self.path / "params.yaml").write_text(out.getvalue())

    def commit(self, message="update"):
        self.run("git", "add", "-A")
        self.run("git", "commit", "-qm", message)

    def read(self, relative):
        return (self.path / relative).read_text()


def project_params(url="cifar-10-python.tar.gz", md5=None, root=ROOT, **sections):
    """params.yaml for a test project: this checkout's file for its layout and comments, holding exactly the
    sections of TEST_PARAMS (then `sections`) with every value pinned, and data.url and data.md5 naming `url`
    and `md5`. The section of a variant a user added here is left out (a test that adds it, as the README does,
    must find none), unless a test lists that variant: then it comes as the user wrote it (variant_params).
    A section of the schema the tests do not pin (a user's own, lenet_mixup.params.SCHEMA) comes as it is."""
    yaml = YAML()  # round trip, as DVC writes params back after `dvc exp run -S`
    params = yaml.load((root / "params.yaml").read_text())
    pinned = {section: values if isinstance(values, list) else {**values, **sections.get(section, {})}
              for section, values in TEST_PARAMS.items()}
    pinned["variants"] = sections.get("variants", pinned["variants"])
    pinned.update({name: variant_params(name, root) for name in pinned["variants"] if name not in pinned})
    pinned["data"] = {"url": url, "md5": md5}
    from lenet_mixup.params import SCHEMA
    for section in [s for s in params if s not in pinned and s not in SCHEMA]:  # variants not listed: out
        del params[section]
    for section, values in pinned.items():
        if isinstance(values, list) or section not in params:
            params[section] = values
            continue
        for key in [k for k in params[section] if k not in values]:
            del params[section][key]
        for key, value in values.items():
            params[section][key] = value
    out = io.StringIO()
    yaml.dump(params, out)
    return out.getvalue()


def variant_params(name, root=ROOT):
    """A variant's params for the tests: pinned in TEST_PARAMS, or for a variant of the user's own, which the
    tests cannot know, its section in this checkout's params.yaml."""
    if name in TEST_PARAMS:
        return TEST_PARAMS[name]
    from lenet_mixup.params import read_yaml
    section = read_yaml((root / "params.yaml").read_text()).get(name)
    if section is None:
        pytest.fail(f"variant {name} has a module but no section in params.yaml: give it one, as the README says")
    return section


def copy_project_files(target, names=PROJECT_FILES):
    """This checkout's pipeline files into `target`, and the shipped .dvc/config."""
    for name in names:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        else:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target / name)
    (target / ".dvc").mkdir(exist_ok=True)
    (target / ".dvc/config").write_text(DVC_CONFIG)


def new_project(path, tiny_archive):
    path.mkdir()
    p = Project(path)
    p.run("git", "init", "-q")
    p.run("git", "config", "user.email", "test@example.com")
    p.run("git", "config", "user.name", "test")
    p.dvc("init", "-q")
    copy_project_files(path)
    archive, md5 = tiny_archive
    (path / "params.yaml").write_text(project_params(str(archive), md5))
    p.commit("tiny project")
    return p




def ran(result):
    """Names of the stages a `dvc repro` / `dvc exp run` output (a result or its text) says it ran, in order."""
    text = getattr(result, "stdout", result)
    return re.findall(r"^Running stage '([^']+)'", text, re.M)


ALL_STAGES = ["download", "prepare", "train@baseline", "train@mixup", "evaluate@baseline", "evaluate@mixup",
              "examples@baseline", "examples@mixup", "compare", "plots_page"]
TIMING = ("seconds", "examples_per_sec")  # the columns of epochs.tsv that say how fast, not what


def curve(rows):
    """A run's per-epoch rows without their timing: what must be the same, run after run."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def learning_curve(project, variant):
    from lenet_mixup.metrics import read_tsv
    return curve(read_tsv(project.path / f"metrics/{variant}/epochs.tsv"))


def killed_after(epochs, monkeypatch, variant, train, params, device, resume):
    """Run train_variant with a resume state, interrupted as a kill would be after `epochs` complete epochs."""
    from lenet_mixup import training
    real, calls = training.evaluate, []

    def evaluate(*args):
        if len(calls) == epochs:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args)
    with monkeypatch.context() as m:
        m.setattr(training, "evaluate", evaluate)
        with pytest.raises(KeyboardInterrupt):
            training.train_variant(variant, train, params, device, resume_path=resume)


class RunsACommand:
    """What a crafted archive can hold: unpickling it would run `touch <marker>`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)
