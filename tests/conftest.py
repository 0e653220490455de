"""Shared fixtures: tiny CIFAR-10 archives in the official layout, and the project in a temp git repo.

The test files are in two folders: unit/ (in-process, quick: `make test-fast`) and pipeline/ (the
pipeline through DVC's own commands, sweeps on Ray, the README's and the docs' flows). What both share
besides fixtures is in helpers.py.
"""
import fcntl
import os
import shutil
import tempfile

import pytest

from tests.helpers import Project, new_project, write_archive

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
