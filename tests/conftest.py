"""Shared fixtures: tiny CIFAR-10 archives in the official layout, and the project in a temp git repo."""
import fcntl
import gzip
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from lenet_mixup.synthetic import CLASSES, synthetic_split, write_archive  # noqa: F401 - the tests' archives

ROOT = Path(__file__).resolve().parents[1]
# What a clone of the project holds that the pipeline needs. Not params.yaml nor .dvc/config: the tests
# write their own (project_params, DVC_CONFIG), so nothing a user did in this workspace reaches a test.
PROJECT_FILES = ["dvc.yaml", "stages", "lenet_mixup", "tools", "requirements.txt", ".dvcignore", ".dvc/plots",
                 ".gitignore", "data/.gitignore", "data/raw/.gitignore", "models/.gitignore",
                 "metrics/.gitignore", "metrics/baseline/.gitignore", "metrics/mixup/.gitignore"]
# Every value the tests rely on, pinned: a workspace whose params.yaml holds an applied experiment, or
# a commit of other values, runs the tests on these.
TEST_PARAMS = {
    "train": {"epochs": 2, "batch_size": 50, "lr": 0.001, "seed": 0, "device": "auto", "precision": "fp32",
              "steps_per_epoch": None, "validation_steps": None, "shards": 2},
    "mixup": {"alpha": 1.0, "warmup": 1},
    "evaluate": {"fgsm_eps_255": [1, 2, 4, 8], "ece_bins": 15},
}
# The project's .dvc/config as shipped, without what a user adds to theirs (remotes, above all).
DVC_CONFIG = "[core]\n    analytics = false\n[plots]\n    html_template = ../data/plots-offline.html\n"


# The test files that take longest, longest first. `make test` hands whole files to the cores in the order
# they are collected (pytest-xdist --dist loadfile), so these start first, and the short ones fill in
# around them instead of a long one starting last and running alone.
LONGEST_FIRST = ["test_sweep.py", "test_readme.py", "test_sweep_bench.py", "test_bench.py", "test_faults.py",
                 "test_experiments.py", "test_pipeline.py"]


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)  # stable: each file's own order is kept


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory):
    """Nothing of this machine's or this user's setup reaches a test, and nothing is left behind outside
    pytest's own temp folder: DVC's and git's global and system config, DVC's site cache (else
    /var/tmp/dvc), DVC's analytics reports (else one temp file per command in /tmp), Ray's session
    folders (else /tmp/ray), a Ray cluster named by RAY_ADDRESS, the user's thread settings."""
    home = tmp_path_factory.mktemp("environment")
    gitconfig = home / "gitconfig"
    gitconfig.write_text("[user]\n    name = test\n    email = test@example.com\n[init]\n    defaultBranch = main\n")
    ray = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    settings = {"DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(home / "dvc-site"),
                "DVC_GLOBAL_CONFIG_DIR": str(home / "dvc-global"), "DVC_SYSTEM_CONFIG_DIR": str(home / "dvc-system"),
                "GIT_CONFIG_GLOBAL": str(gitconfig), "GIT_CONFIG_NOSYSTEM": "1", "RAY_TMPDIR": ray}
    dropped = ("RAY_ADDRESS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "DVC_ROOT", "DVC_EXP_GIT_REMOTE")
    saved = {k: os.environ.get(k) for k in [*settings, *dropped]}
    os.environ.update(settings)
    for key in dropped:
        os.environ.pop(key, None)
    yield
    shutil.rmtree(ray, ignore_errors=True)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_archive(tmp_path_factory):
    path = tmp_path_factory.mktemp("archive") / "cifar-10-python.tar.gz"
    return path, write_archive(path)


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
        result = subprocess.run(args, cwd=self.path, env=dvc_env(), capture_output=True, text=True)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def dvc(self, *args, check=True):
        return self.run(sys.executable, "-m", "dvc", *args, check=check)

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
    """params.yaml for a test project: this checkout's file, its layout and comments kept, with every value
    pinned (TEST_PARAMS, then `sections`) and data.url and data.md5 naming `url` and `md5`."""
    yaml = YAML()  # round trip, as DVC writes params back after `dvc exp run -S`
    params = yaml.load((root / "params.yaml").read_text())
    pinned = {section: {**values, **sections.get(section, {})} for section, values in TEST_PARAMS.items()}
    for section, values in {**pinned, "data": {"url": url, "md5": md5}}.items():
        for key, value in values.items():
            params[section][key] = value
    out = io.StringIO()
    yaml.dump(params, out)
    return out.getvalue()


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


@pytest.fixture(scope="session")
def project_template(tmp_path_factory, tiny_archive):
    return new_project(tmp_path_factory.mktemp("template") / "project", tiny_archive)


@pytest.fixture
def project(tmp_path, project_template):
    """The pipeline in a fresh git + DVC repo, on the tiny archive, nothing run yet (a copy of one made once:
    the git and DVC set-up is a dozen processes)."""
    shutil.copytree(project_template.path, tmp_path / "project", symlinks=True)
    return Project(tmp_path / "project")


@pytest.fixture(scope="session")
def finished_template(tmp_path_factory, tiny_archive):
    """A tiny project whose whole pipeline has run and been committed: built once per test run and shared
    by the xdist workers (the first to need it builds it under a lock; the others wait and reuse it)."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # this run's, common to its workers
    folder = shared / "finished"
    with open(shared / "finished.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            p = new_project(folder / "project", tiny_archive)
            (folder / "first_run.txt").write_text(p.dvc("repro").stdout)
            p.commit("first run")
            (folder / "done").touch()
    p = Project(folder / "project")
    p.first_run = (folder / "first_run.txt").read_text()  # what its `dvc repro` printed
    return p


@pytest.fixture
def finished_project(tmp_path, finished_template):
    """A copy of a project whose whole pipeline has run and been committed (one run per session)."""
    shutil.copytree(finished_template.path, tmp_path / "project", symlinks=True)
    project = Project(tmp_path / "project")
    project.first_run = finished_template.first_run  # what its `dvc repro` printed
    return project


@pytest.fixture
def prepared(tmp_path, monkeypatch, tiny_archive):
    """A working folder (the current one) holding data/prepared/ from the tiny archive: 250 train, 100 eval images."""
    from lenet_mixup import paths
    from stages import prepare
    monkeypatch.chdir(tmp_path)
    paths.RAW_ARCHIVE.parent.mkdir(parents=True)
    shutil.copy(tiny_archive[0], paths.RAW_ARCHIVE)
    prepare.main()
    return tmp_path
