"""Every flow the README shows, run as written, in the README's order, from a fresh clone, through DVC.

The blocks marked `<!-- flow: NAME -->` in README.md run line by line in one bash session, on a tiny
archive. The only stand-ins: ../shared/cifar10/make_archive.py copies the tiny archive (whose md5
replaces the real one's), temporary folders replace /mnt/shared/dvc-cache and /path/to/this/repository,
and `python3 -m venv` links the test run's own, already installed, environment instead of building one.
"""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DVC_CONFIG, ROOT, copy_project_files, dvc_env, project_params
from tests.test_pipeline import ALL_STAGES, ran

FLOWS = ["try-out", "offline first run", "everyday", "failed experiment", "share", "other machine", "sweep"]
REAL_MD5 = "6887622ef4a2fb302ab8f665434a650f"
SMALL_MD5 = "2421d9319ffa033b5c4a0d329ffd130a"
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
SHIPPED_WITHOUT = {"dvc.lock"}  # a record of a run, which the README's first run commits
FLOW = re.compile(r"<!-- flow: (.+?) -->\n```bash\n(.*?)```", re.S)
COMMENT = re.compile(r"\s+#\s.*$")


def readme_flows():
    return {name: block for name, block in FLOW.findall((ROOT / "README.md").read_text())}


def test_the_flows_tested_are_the_readme_flows_in_its_order():
    assert list(readme_flows()) == FLOWS


class Session:
    """One bash session: each line of a flow runs in it (so `cd` and `source` carry over), with its exit
    status and output recorded."""

    def __init__(self, cwd, env, substitutions):
        self.cwd, self.env, self.substitutions = cwd, env, substitutions

    def run(self, flow):
        return self.run_lines([COMMENT.sub("", line) for line in readme_flows()[flow].splitlines() if line.strip()])

    def run_lines(self, lines):
        for old, new in self.substitutions.items():
            lines = [line.replace(old, new) for line in lines]
        script = f"exec 2>&1\ncd {self.cwd}\n" + "".join(f"echo '::start {i}::'\n{line}\necho \"::rc {i} $?::\"\n"
                                              for i, line in enumerate(lines))
        script += "echo \"::cwd $PWD::\"\n"
        done = subprocess.run(["bash", "-c", script], env=self.env, capture_output=True, text=True, timeout=1200)
        self.cwd = re.search(r"::cwd (.*)::", done.stdout).group(1)
        steps = []
        for i, line in enumerate(lines):
            part = done.stdout.split(f"::start {i}::\n", 1)[1].split(f"::rc {i} ", 1)
            steps.append((line, int(part[1].split("::", 1)[0]), part[0]))
        return steps


@pytest.fixture
def fresh_clone(tmp_path, tiny_archive):
    """A clone of the project as shipped (the tracked files, default params, no dvc.lock: a workspace whose
    first run was committed, as the README says to, would otherwise hand its run to the flows) from
    `origin`, a bare repository standing in for the git server both machines use, beside a
    ../shared/cifar10 stand-in."""
    project = tmp_path / "project"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in tracked.stdout.split("\0"):
        if name and name not in SHIPPED_WITHOUT and (ROOT / name).is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, project / name)
    copy_project_files(project, [])  # the shipped .dvc/config
    (project / "params.yaml").write_text(project_params(OFFICIAL_URL, OFFICIAL_MD5))
    origin = tmp_path / "origin.git"
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "the project"],
                 ["clone", "-q", "--bare", str(project), str(origin)], ["remote", "add", "origin", str(origin)],
                 ["fetch", "-q", "origin"], ["branch", "-q", "--set-upstream-to=origin/main"]):
        subprocess.run(["git", *args], cwd=project, check=True, capture_output=True)

    stand_in = tmp_path / "shared/cifar10/make_archive.py"
    stand_in.parent.mkdir(parents=True)
    archive, md5 = tiny_archive  # for the small archive and the full one alike: the try-out runs every stage
    stand_in.write_text(f"import shutil, sys\nshutil.copy({str(archive)!r}, sys.argv[1])\n"
                        f"print(f'wrote {{sys.argv[1]}}: the tiny test archive, md5 {md5}')\n")
    tools = tmp_path / "bin"  # `python3 -m venv DIR` links this test run's environment
    tools.mkdir()
    venv = Path(sys.executable).parent.parent
    (tools / "python3").write_text(f'#!/bin/sh\nif [ "$1 $2" = "-m venv" ]; then exec ln -sfn {venv} "$3"; fi\n'
                                   f'exec {sys.executable} "$@"\n')
    (tools / "python3").chmod(0o755)
    env = dvc_env()
    env.update(HOME=str(tmp_path / "home"), PATH=f"{tools}:{env['PATH']}")
    (tmp_path / "home").mkdir()
    (tmp_path / "home/.gitconfig").write_text("[user]\n    name = test\n    email = test@example.com\n")
    (tmp_path / "other").mkdir()
    return Session(project, env, {REAL_MD5: md5, SMALL_MD5: md5,
                                  "/mnt/shared/dvc-cache": str(tmp_path / "remote"),
                                  "git@example.com:you/lenet-mixup.git": str(origin)}), tmp_path


def test_the_fresh_clone_is_the_project_as_shipped(fresh_clone):
    """Also in a workspace whose first run, params and experiments were committed (the README test's inner
    sample runs this there): no run of this workspace's reaches the flows."""
    session, _ = fresh_clone
    assert not (session.cwd / "dvc.lock").exists()
    assert (session.cwd / "params.yaml").read_text() == project_params(OFFICIAL_URL, OFFICIAL_MD5)
    assert (session.cwd / ".dvc/config").read_text() == DVC_CONFIG


def succeeded(steps):
    for line, rc, output in steps:
        assert rc == 0, f"`{line}` failed ({rc}):\n{output[-3000:]}"
    return {line.split(" #")[0]: output for line, _, output in steps}


def git_clean(project):
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=project,
                          capture_output=True, text=True).stdout == ""


def test_the_readme_flows_work_as_written(fresh_clone):
    """Every flow in the README's order in one clone; then, in that used workspace (a remote, experiments
    run, pushed and applied), a sample of the test suite passes."""
    session, tmp = fresh_clone
    project = session.cwd

    steps = session.run("try-out")
    out = succeeded(steps)
    first = steps[2][2]
    assert "md5 ok:" in first and ran(first) == ALL_STAGES
    assert first.count("No file hash info found for") == 20  # what the README explains
    assert (project / "dvc_plots/index.html").is_file()

    steps = session.run("offline first run")
    out = succeeded(steps)
    # The same tiny archive stands in for both: only the download runs again, and finds nothing changed.
    assert ran(steps[-1][2]) == ["download"] and "md5 ok" in steps[-1][2] and "No file hash info" not in steps[-1][2]
    make_repro = subprocess.run(["make", "repro"], cwd=project, env=session.env, capture_output=True, text=True)
    assert make_repro.returncode == 0 and "Data and pipelines are up to date" in make_repro.stdout

    steps = session.run("everyday")
    out = [output for _, _, output in steps]
    succeeded(steps)
    assert "Stage 'train_baseline' didn't change, skipping" in out[1] and "Running stage 'train_mixup'" in out[1]
    diff = subprocess.run(["git", "diff", "-U0", "params.yaml"], cwd=project, capture_output=True, text=True).stdout
    assert [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")] == \
        ["-  alpha: 1.0          # lambda ~ Beta(alpha, alpha), one draw per batch",
         "+  alpha: 0.4          # lambda ~ Beta(alpha, alpha), one draw per batch"], diff
    assert "metrics/mixup/summary.json" in out[2] and "metrics/baseline/summary.json" not in out[2]
    shown = out[3]
    assert "mixup.alpha" in shown and "final_eval_acc" in shown and "train.lr" not in shown
    assert max(len(line) for line in shown.splitlines()) < 200
    assert (project / "dvc_plots/index.html").is_file()
    experiment = subprocess.run([sys.executable, "-m", "dvc", "exp", "list", "--name-only"], cwd=project,
                                env=session.env, capture_output=True, text=True).stdout.split()

    steps = session.run("failed experiment")
    (failed, rc, output), *rest = steps
    assert rc != 0 and "the training loss became nan" in output and "lower train.lr" in output
    succeeded(rest)
    assert "Data and pipelines are up to date" in rest[-1][2] and git_clean(project)

    steps = session.run("share")
    out = succeeded(steps)
    assert "Pushed experiment" in steps[-1][2]
    session.cwd = tmp / "other"
    steps = session.run("other machine")
    out = succeeded(steps)
    clone = tmp / "other/lenet-mixup"
    assert session.cwd == str(clone)
    assert ran(steps[4][2]) == [] and "Data and pipelines are up to date" in steps[4][2]
    restored = steps[5][2]
    assert "Stage 'train_mixup' is cached - skipping run" in restored, restored
    assert ran(restored) == [] and "mixup epoch" not in restored  # no training: the stage's own log is absent
    assert (clone / "dvc_plots/index.html").is_file()

    # Back on the first machine: the Sweeps section's grid. Its alpha 0.4 seed 0 point is the everyday
    # flow's experiment, so three runs go, two at a time, seed 1's baseline trained once.
    session.cwd = str(project)
    steps = session.run("sweep")
    out = succeeded(steps)
    swept = steps[0][2]
    assert "4 runs, 1 already done, 3 to run" in swept and "3 of 3 runs done" in swept, swept
    assert "Token authentication" not in swept
    report = steps[2][2]
    assert "| baseline | 2: 0, 1 |" in report and "| mixup alpha=0.2 | 2: 0, 1 |" in report, report
    assert "| metric | mixup alpha=0.2 - baseline | mixup alpha=0.4 - baseline |" in report, report
    assert "alpha: 0.4" in (project / "params.yaml").read_text() and "seed: 1" in (project / "params.yaml").read_text()

    # An older experiment applied on the first machine keeps the remote; the README's line goes back.
    assert len(experiment) == 1, experiment  # the alpha 0.4 run of the everyday flow (others since: the sweep's)
    steps = session.run_lines([f"dvc exp apply {experiment[0]}", "dvc push",
                               "git checkout HEAD -- params.yaml dvc.lock metrics && dvc checkout", "dvc status"])
    succeeded(steps)
    assert "shared" in (project / ".dvc/config.local").read_text() and git_clean(project)
    plan = subprocess.run(["make", "sweep", "ARGS=--dry -S 'mixup.alpha=0.2,0.4' -S 'train.seed=0,1'"], cwd=project,
                          env=session.env, capture_output=True, text=True)
    assert plan.returncode == 0 and "4 runs, 4 already done, 0 to run" in plan.stdout, plan.stdout + plan.stderr

    # The suite, in this used workspace: nothing of it (the remote, the experiments, dvc_plots) leaks in.
    assert "dvc.lock" in subprocess.run(["git", "ls-files"], cwd=project, capture_output=True, text=True).stdout
    sample = ["tests/test_params.py", "tests/test_dvc_yaml.py", "tests/test_pipeline.py::test_a_test_project_holds_"
              "no_remote_of_this_workspace", "tests/test_readme.py::test_the_fresh_clone_is_the_project_as_shipped"]
    inner = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *sample], cwd=project,
                           env={**session.env, "PYTHONPATH": str(project)}, capture_output=True, text=True)
    assert inner.returncode == 0, inner.stdout[-3000:] + inner.stderr[-2000:]


# Every command a README code block shows, and the test that runs it (at least as a smoke test).
COVERED = {
    "make repro": "test_the_readme_flows_work_as_written",
    "make test": ".ci/run (CI runs the README's test command)",
    "python -m tools.sweep -S": "tests/test_sweep.py::test_four_runs_on_two_workers_come_back_as_experiments",
    "make sweep ARGS=": "test_the_readme_flows_work_as_written",
    "dvc exp show": "tests/test_sweep.py::test_four_runs_on_two_workers_come_back_as_experiments",
    "python -m tools.report --archive runs": "tests/test_sweep.py::test_the_archive_from_a_fresh_clone_gives_the_"
                                             "experiments_report",
    "python -m tools.report": "tests/test_sweep.py::test_the_experiments_work_with_dvc_and_the_report",
    "python -m tools.export --to runs": "tests/test_sweep.py::test_the_archive_from_a_fresh_clone_gives_the_"
                                        "experiments_report",
    "dvc exp apply": "tests/test_sweep.py::test_the_experiments_work_with_dvc_and_the_report",
    "git push origin HEAD": "tests/test_sweep.py (remote_sweep: to the bare repository the runs clone)",
    "python -m tools.sweep --address": "tests/test_sweep.py (remote_sweep: on a `ray start --head` cluster)",
    "OMP_NUM_THREADS=1 python -m bench.sweep_speed": "tests/test_sweep_bench.py",
    "make bench": "tests/test_bench.py",
    "python -m bench.train_speed": "tests/test_bench.py",
    "python -m tools.sweep -S 'train.seed=range(0,5)' --archive study/runs":
        "tests/test_sweep.py::test_a_run_is_archived_and_committed_as_it_finishes_and_then_done",
    "python -m tools.sweep -S 'mixup.alpha=0.2,0.4,2.0' -S 'train.seed=range(0,3)' --archive study/runs":
        "tests/test_sweep.py::test_a_run_is_archived_and_committed_as_it_finishes_and_then_done",
    "python -m tools.sweep -S 'train.precision=bf16' -S 'train.seed=range(0,3)' --archive study/runs":
        "tests/test_sweep.py::test_a_run_is_archived_and_committed_as_it_finishes_and_then_done",
    "make study-report": "tests/test_report.py::test_the_committed_report_is_the_committed_archives_report",
    "bash bench/gpu_check.sh --stage-carry": "tests/test_cuda.py::test_gpu_check_stages_what_a_device_call_carries",
    "bash bench/gpu_check.sh": "tests/test_cuda.py (on a GPU: the check itself; here: its --cpu-smoke mode)",
}


def readme_commands():
    """The command lines of the README's bash blocks that are not flows (the flows run above)."""
    text = (ROOT / "README.md").read_text()
    flows = {block for _, block in FLOW.findall(text)}
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        if block not in flows:
            yield from (COMMENT.sub("", line) for line in block.splitlines() if line.strip())


def test_every_command_the_readme_shows_is_run_by_a_test():
    uncovered = [line for line in readme_commands() if not any(line.startswith(c) for c in COVERED)]
    assert not uncovered, f"README commands no test runs (add a test and list it in COVERED): {uncovered}"
    for command, where in COVERED.items():
        path, _, name = where.partition("::")
        if path.startswith("tests/"):
            test_file = ROOT / path.split(" ")[0]
            assert test_file.is_file(), f"{command}: {test_file} is missing"
            assert not name or f"def {name}(" in test_file.read_text(), f"{command}: no test {name} in {path}"
        elif not path.startswith(".ci/"):
            assert f"def {path}(" in Path(__file__).read_text(), f"{command}: no test {path} here"
