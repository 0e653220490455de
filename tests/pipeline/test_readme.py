"""Every flow the README and the docs show, run as written, in their order, from a fresh clone, through DVC.

The blocks marked `<!-- flow: NAME -->` in README.md and then in the docs pages (PAGES, in that order) run
line by line in one bash session, on a tiny archive. The only stand-ins: the clone's params.yaml names the
tiny archive (a local file) in place of the official download, which is also the archive the offline page
copies by hand; temporary folders replace /mnt/shared/dvc-cache and the git server; and `python3 -m venv`
links the test run's own, already installed, environment instead of building one.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lenet_mixup.params import read_yaml
from tests.helpers import ALL_STAGES, DVC_CONFIG, ROOT, copy_project_files, dvc_env, project_params, ran
from tools.runs import captured

PAGES = ["README.md", "docs/offline.md", "docs/experiments.md", "docs/sweeps.md"]  # the pages with flows, in order
FLOWS = ["quick start", "everyday", "failed experiment", "new variant", "offline first run", "watch", "share",
         "other machine", "sweep"]
INNER = "LENET_MIXUP_README_TEST_INNER"  # set in the run of the suite inside the used workspace
SHIPPED_WITHOUT = {"dvc.lock"}  # a record of a run, which the README's first run commits
FLOW = re.compile(r"<!-- flow: (.+?) -->\n```bash\n(.*?)```", re.S)
COMMENT = re.compile(r"\s+#\s.*$")
# The test's own variant, written where the README's step copies crop_flip.py: random erasing (Zhong et al.,
# 2020), a square of `size` pixels set to 0 at a random place in each image, every label kept. Its mask makes a
# batch in the default layout, which the loop must put back in channels_last.
OWN_VARIANT = '''"""Random erasing: in each image a `size` x `size` square, at a place of its own, set to 0."""
import torch

from lenet_mixup.params import integer

PARAMS = {"size": integer(at_least=1), "warmup": integer(at_least=0)}
ACTION = "erased"


def first_epoch(params):
    return params["warmup"]


def draw(params, shape, device):
    return torch.rand(shape[0], 2, device=device)  # per image: the square's top and left, as fractions


def transform(x, draw, params):
    n, _, height, width = x.shape
    size = params["size"]
    top = (draw[:, 0] * (height - size + 1)).floor().view(n, 1, 1)
    left = (draw[:, 1] * (width - size + 1)).floor().view(n, 1, 1)
    rows = torch.arange(height, device=x.device).view(1, -1, 1)
    columns = torch.arange(width, device=x.device).view(1, 1, -1)
    inside = (rows >= top) & (rows < top + size) & (columns >= left) & (columns < left + size)
    return x.masked_fill(inside.unsqueeze(1), 0.0), None
'''
HISTORY = re.compile(r"this task|(later|earlier|previous) session|issue [0-9]", re.I)


def documents():
    return ["README.md"] + sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))


def flows():
    """{name: block} of every flow, the README's first, then each page's of PAGES, then any other page's."""
    order = PAGES + [d for d in documents() if d not in PAGES]
    return {name: block for page in order for name, block in FLOW.findall((ROOT / page).read_text())}


def test_the_flows_tested_are_the_docs_flows_in_their_order():
    assert list(flows()) == FLOWS


def test_every_docs_page_is_reachable_from_the_readme_and_every_link_resolves():
    readme = (ROOT / "README.md").read_text()
    for page in documents()[1:]:
        assert f"({page})" in readme, f"the README does not link {page}"
    for document in documents():
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", (ROOT / document).read_text()):
            assert ((ROOT / document).parent / target).exists(), f"{document} links {target}, which is missing"


def test_no_flow_needs_a_file_outside_the_repository_and_no_page_tells_history():
    for name, block in flows().items():
        assert "../" not in block, f"flow {name!r} reaches outside the repository"
    sources = [ROOT / d for d in documents()] + [p for folder in ("lenet_mixup", "stages", "tools", "bench")
                                                 for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".sh")]
    for path in sources:
        found = HISTORY.search(path.read_text())
        assert not found, f"{path.relative_to(ROOT)}: {found.group(0)!r}"
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


class Session:
    """One bash session: each line of a flow runs in it (so `cd` and `source` carry over), with its exit
    status and output recorded."""

    def __init__(self, cwd, env, substitutions):
        self.cwd, self.env, self.substitutions = cwd, env, substitutions

    def run(self, flow):
        return self.run_lines([COMMENT.sub("", line) for line in flows()[flow].splitlines() if line.strip()])

    def run_lines(self, lines):
        for old, new in self.substitutions.items():
            lines = [line.replace(old, new) for line in lines]
        script = f"exec 2>&1\ncd {self.cwd}\n" + "".join(f"echo '::start {i}::'\n{line}\necho \"::rc {i} $?::\"\n"
                                              for i, line in enumerate(lines))
        script += "echo \"::cwd $PWD::\"\n"
        done = captured(["bash", "-c", script], env=self.env, timeout=1200)  # the queue's workers outlive it
        self.cwd = re.search(r"::cwd (.*)::", done.stdout).group(1)
        steps = []
        for i, line in enumerate(lines):
            part = done.stdout.split(f"::start {i}::\n", 1)[1].split(f"::rc {i} ", 1)
            steps.append((line, int(part[1].split("::", 1)[0]), part[0]))
        return steps


@pytest.fixture
def fresh_clone(tmp_path, tiny_archive):
    """A clone of the project as shipped (the tracked files, default params but the archive, no dvc.lock: a
    workspace whose first run was committed, as the README says to, would otherwise hand its run to the
    flows) from `origin`, a bare repository standing in for the git server both machines use."""
    project = tmp_path / "project"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in tracked.stdout.split("\0"):
        if name and name not in SHIPPED_WITHOUT and (ROOT / name).is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, project / name)
    copy_project_files(project, [])  # the shipped .dvc/config
    archive, md5 = tiny_archive
    (project / "params.yaml").write_text(project_params(str(archive), md5))
    origin = tmp_path / "origin.git"
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "the project"],
                 ["clone", "-q", "--bare", str(project), str(origin)], ["remote", "add", "origin", str(origin)],
                 ["fetch", "-q", "origin"], ["branch", "-q", "--set-upstream-to=origin/main"]):
        subprocess.run(["git", *args], cwd=project, check=True, capture_output=True)
    home = tmp_path / "home"
    (home / "datasets").mkdir(parents=True)
    shutil.copy(archive, home / "datasets/cifar-10-python.tar.gz")  # the copy the offline page makes by hand
    (home / ".gitconfig").write_text("[user]\n    name = test\n    email = test@example.com\n")
    tools = tmp_path / "bin"  # `python3 -m venv DIR` links this test run's environment
    tools.mkdir()
    venv = Path(sys.executable).parent.parent
    (tools / "python3").write_text(f'#!/bin/sh\nif [ "$1 $2" = "-m venv" ]; then exec ln -sfn {venv} "$3"; fi\n'
                                   f'exec {sys.executable} "$@"\n')
    (tools / "python3").chmod(0o755)
    env = dvc_env()
    env.update(HOME=str(home), PATH=f"{tools}:{env['PATH']}")
    (tmp_path / "other").mkdir()
    return Session(project, env, {"/mnt/shared/dvc-cache": str(tmp_path / "remote"),
                                  "git@example.com:you/lenet-mixup.git": str(origin)}), tmp_path


def test_the_fresh_clone_is_the_project_as_shipped(fresh_clone):
    """Also in a workspace whose first run, params and experiments were committed (the README test's inner
    sample runs this there): no run of this workspace's reaches the flows."""
    session, _ = fresh_clone
    assert not (session.cwd / "dvc.lock").exists()
    assert read_yaml((session.cwd / "params.yaml").read_text())["data"]["url"].endswith("cifar-10-python.tar.gz")
    assert (session.cwd / "params.yaml").read_text().startswith((ROOT / "params.yaml").read_text()[:200])
    assert (session.cwd / ".dvc/config").read_text() == DVC_CONFIG


def succeeded(steps):
    for line, rc, output in steps:
        assert rc == 0, f"`{line}` failed ({rc}):\n{output[-3000:]}"
    return {line.split(" #")[0]: output for line, _, output in steps}


def git_clean(project):
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=project,
                          capture_output=True, text=True).stdout == ""


def plot_rows(cwd, env, chart="Eval accuracy"):
    shown = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json"], cwd=cwd, env=env,
                           capture_output=True, text=True)
    return json.loads(shown.stdout)["data"][chart][0]["content"]["data"]["values"]


def test_the_docs_flows_work_as_written(fresh_clone):
    """Every flow in its order in one clone; then, in that used workspace (a remote, a variant of its own,
    experiments run, pushed and applied), a sample of the test suite passes."""
    session, tmp = fresh_clone
    project = session.cwd

    steps = session.run("quick start")
    out = succeeded(steps)
    first = steps[1][2]
    assert "md5 ok:" in first and sorted(ran(first)) == sorted(ALL_STAGES)
    assert first.count("No file hash info found for") == 24  # what the README explains
    assert (project / "dvc_plots/index.html").is_file()
    make_repro = subprocess.run(["make", "repro"], cwd=project, env=session.env, capture_output=True, text=True)
    assert make_repro.returncode == 0 and "Data and pipelines are up to date" in make_repro.stdout

    steps = session.run("everyday")
    out = [output for _, _, output in steps]
    succeeded(steps)
    assert "Stage 'train@baseline' didn't change, skipping" in out[1] and "Running stage 'train@mixup'" in out[1]
    diff = subprocess.run(["git", "diff", "-U0", "params.yaml"], cwd=project, capture_output=True, text=True).stdout
    assert [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")] == \
        ["-  alpha: 1.0          # lambda ~ Beta(alpha, alpha), one draw per batch",
         "+  alpha: 0.4          # lambda ~ Beta(alpha, alpha), one draw per batch"], diff
    assert "metrics/mixup/summary.json" in out[2] and "metrics/baseline/summary.json" not in out[2]
    shown = out[3]
    assert "mixup.alpha" in shown and "final_eval_acc" in shown and "train.lr" not in shown
    assert max(len(line) for line in shown.splitlines()) < 200
    experiment = subprocess.run([sys.executable, "-m", "dvc", "exp", "list", "--name-only"], cwd=project,
                                env=session.env, capture_output=True, text=True).stdout.split()

    steps = session.run("failed experiment")
    (failed, rc, output), *rest = steps
    assert rc != 0 and "the training loss became nan" in output and "lower train.lr" in output
    succeeded(rest)
    assert "Data and pipelines are up to date" in rest[-1][2] and git_clean(project)

    # A variant of one's own, by the steps "Where to change what" gives: the copy, then the test's own transform
    # written into it (the user's edit), then the rest as written. It is trained on the CPU path, evaluated, compared
    # and plotted in a colour of its own; the others are not run again; the user edited two files.
    copy, *rest = [COMMENT.sub("", line) for line in flows()["new variant"].splitlines() if line.strip()]
    succeeded(session.run_lines([copy]))
    own = re.findall(r"variants/(\w+)\.py", copy)[-1]  # the copy's name
    (project / f"lenet_mixup/variants/{own}.py").write_text(OWN_VARIANT)
    steps = session.run_lines(rest)
    succeeded(steps)
    trained = steps[0][2]
    assert sorted(ran(trained)) == ["compare", f"evaluate@{own}", f"examples@{own}", f"train@{own}"], trained
    assert f"{own} epoch 2/2 (erased)" in trained and "training path: cpu" in trained
    committed = subprocess.run(["git", "show", "--name-only", "--format=", "HEAD"], cwd=project,
                               capture_output=True, text=True).stdout.split()
    edited = [f for f in committed if f != "dvc.lock" and not f.endswith(".gitignore")]
    module = f"lenet_mixup/variants/{own}.py"  # already committed where this runs in a workspace that followed it
    assert "params.yaml" in edited and set(edited) <= {module, "params.yaml"}, committed
    assert subprocess.run(["git", "show", f"HEAD:{module}"], cwd=project, capture_output=True,
                          text=True).stdout == OWN_VARIANT
    metrics = subprocess.run([sys.executable, "-m", "dvc", "metrics", "show"], cwd=project, env=session.env,
                             capture_output=True, text=True).stdout
    assert f"metrics/{own}/summary.json" in metrics and f"metrics/{own}/evaluation.json" in metrics
    assert json.loads((project / f"metrics/{own}/summary.json").read_text())["erased_epochs"] == 2
    assert f"| {own} - baseline |" in (project / "results/comparison.md").read_text()
    colours = {(r["variant"], r["color"]) for r in plot_rows(project, session.env)}
    assert {v for v, _ in colours} == {"baseline", "mixup", own} and len({c for _, c in colours}) == 3

    steps = session.run("offline first run")
    out = succeeded(steps)
    # The copy is the archive the clone already named: only the download runs again, and finds nothing changed.
    assert ran(steps[0][2]) == ["download"] and "md5 ok" in steps[0][2] and git_clean(project)

    # `dvc plots diff` is run again while DVC says the queue's worker has not picked the run up, as the page says.
    queue, show, diff, logs = [COMMENT.sub("", line) for line in flows()["watch"].splitlines() if line.strip()]
    steps = session.run_lines([queue, show])
    deadline = time.time() + 120
    while "has not started running yet" in (tried := session.run_lines([diff]))[0][2] and time.time() < deadline:
        time.sleep(1)
    steps += tried + session.run_lines([logs])
    out = succeeded(steps)
    assert "epochs_done" in steps[1][2] or "Success" in steps[1][2] or "watched" in steps[1][2], steps[1][2]
    assert "Eval accuracy per epoch, mixup" in steps[2][2] or "dvc_plots" in steps[2][2], steps[2][2]
    assert "mixup epoch 2/2" in steps[3][2], steps[3][2]

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
    assert "Stage 'train@mixup' is cached - skipping run" in restored, restored
    # No training or evaluation (their own logs are absent); the comparison of this new combination, a second
    assert set(ran(restored)) <= {"compare"} and "mixup epoch" not in restored
    assert (clone / "dvc_plots/index.html").is_file()

    # Back on the first machine: the sweeps page's grid, every run new, each seed's baseline trained once.
    session.cwd = str(project)
    steps = session.run("sweep")
    out = succeeded(steps)
    swept = steps[0][2]
    assert "4 runs, 0 already done, 4 to run" in swept and "4 of 4 runs done" in swept, swept
    assert "Token authentication" not in swept
    report = steps[2][2]
    assert "supported" in report or "not shown" in report or "contradicted" in report, report
    assert "reports/report.md" in report and len(report.splitlines()) < 40, report
    applied = read_yaml((project / "params.yaml").read_text())
    assert (applied["mixup"]["alpha"], applied["train"]["seed"]) == (1.0, 1)

    # An older experiment applied on the first machine keeps the remote; the README's line goes back.
    assert len(experiment) == 1, experiment  # the alpha 0.4 run of the everyday flow (others since: the sweep's)
    back = next(line for line in flows()["failed experiment"].splitlines() if line.startswith("git checkout"))
    steps = session.run_lines([f"dvc exp apply {experiment[0]}", "dvc push", back, "dvc status"])
    succeeded(steps)
    assert "shared" in (project / ".dvc/config.local").read_text() and git_clean(project)
    plan = subprocess.run(["make", "sweep", "ARGS=--dry -S 'mixup.alpha=0.4,1.0' -S 'train.seed=0,1'"], cwd=project,
                          env=session.env, capture_output=True, text=True)
    assert plan.returncode == 0 and "4 runs, 4 already done, 0 to run" in plan.stdout, plan.stdout + plan.stderr

    # The suite, in this used workspace (a remote, a variant of its own committed, experiments run, pushed and
    # applied): the tests that build projects, and this README test itself, pass; nothing of the workspace leaks in.
    if os.environ.get(INNER):
        return  # this is that inner run: it does not start another
    assert "dvc.lock" in subprocess.run(["git", "ls-files"], cwd=project, capture_output=True, text=True).stdout
    sample = ["tests/unit/test_params.py", "tests/unit/test_dvc_yaml.py", "tests/unit/test_variants.py",
              "tests/pipeline/test_variants_pipeline.py",
              "tests/pipeline/test_pipeline.py::test_a_test_project_holds_no_remote_of_this_workspace",
              "tests/pipeline/test_readme.py"]
    inner = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *sample], cwd=project,
                           env={**session.env, "PYTHONPATH": str(project), INNER: "1"}, capture_output=True, text=True)
    assert inner.returncode == 0, inner.stdout[-3000:] + inner.stderr[-2000:]
    assert " passed" in inner.stdout.splitlines()[-1] and "skipped" not in inner.stdout.splitlines()[-1]


# Every command a code block of the README or the docs shows, and the test that runs it (at least as a smoke test).
SWEEP = "tests/pipeline/test_sweep.py"
COVERED = {
    "make repro": "test_the_docs_flows_work_as_written",
    "make test-fast": "tests/pipeline/test_bench.py::test_make_test_fast_runs_the_unit_tests",
    "make test": ".ci/run (CI runs the README's test command)",
    "make lint": "tests/pipeline/test_bench.py::test_make_lint_passes",
    "python -m pytest": "tests/pipeline/test_bench.py::test_make_test_fast_runs_the_unit_tests",
    "python -m tools.sweep -S 'variants=": f"{SWEEP}::test_a_run_with_a_variant_more_trains_it_alone_and_reports_it",
    "python -m tools.sweep -S": f"{SWEEP}::test_four_runs_on_two_workers_come_back_as_experiments",
    "make sweep ARGS=": "test_the_docs_flows_work_as_written",
    "dvc exp show": f"{SWEEP}::test_four_runs_on_two_workers_come_back_as_experiments",
    "python -m tools.report --archive runs":
        f"{SWEEP}::test_the_archive_from_a_fresh_clone_gives_the_experiments_report",
    "python -m tools.report": f"{SWEEP}::test_the_experiments_work_with_dvc_and_the_report",
    "python -m tools.export --to runs": f"{SWEEP}::test_the_archive_from_a_fresh_clone_gives_the_experiments_report",
    "dvc exp apply": f"{SWEEP}::test_the_experiments_work_with_dvc_and_the_report",
    "git push origin HEAD": f"{SWEEP} (remote_sweep: to the bare repository the runs clone)",
    "python -m tools.sweep --address": f"{SWEEP} (remote_sweep: on a `ray start --head` cluster)",
    "OMP_NUM_THREADS=1 python -m bench.sweep_speed": "tests/pipeline/test_sweep_bench.py",
    "make bench": "tests/pipeline/test_bench.py",
    "python -m bench.train_speed": "tests/pipeline/test_bench.py",
    "python -m bench.contention": "tests/pipeline/test_bench.py",
    "python -m tools.sweep -S 'train.seed=range(0,5)' --archive study/runs":
        f"{SWEEP}::test_a_run_is_archived_and_committed_as_it_finishes_and_then_done",
    "python -m tools.sweep -S 'mixup.alpha=0.2,0.4,2.0' -S 'train.seed=range(0,3)' --archive study/runs":
        f"{SWEEP}::test_a_run_is_archived_and_committed_as_it_finishes_and_then_done",
    "python -m tools.sweep -S 'train.precision=bf16' -S 'train.seed=range(0,3)' --archive study/runs":
        f"{SWEEP}::test_a_run_is_archived_and_committed_as_it_finishes_and_then_done",
    "make study-report": "tests/unit/test_report.py::test_the_committed_report_is_the_committed_archives_report",
    "bash bench/gpu_check.sh --stage-carry":
        "tests/pipeline/test_gpu_check.py::test_gpu_check_stages_what_a_device_call_carries",
    "bash bench/gpu_check.sh": "tests/pipeline/test_gpu_check.py (its --cpu-smoke mode; on a GPU: the check itself)",
}


def shown_commands():
    """The command lines of the bash blocks of the README and the docs that are not flows (those run above)."""
    for document in documents():
        text = (ROOT / document).read_text()
        flow_blocks = {block for _, block in FLOW.findall(text)}
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            if block not in flow_blocks:
                yield from (COMMENT.sub("", line) for line in block.splitlines() if line.strip())


def test_every_command_the_docs_show_is_run_by_a_test():
    uncovered = [line for line in shown_commands() if not any(line.startswith(c) for c in COVERED)]
    assert not uncovered, f"commands no test runs (add a test and list it in COVERED): {uncovered}"
    for command, where in COVERED.items():
        path, _, name = where.partition("::")
        if path.startswith("tests/"):
            test_file = ROOT / path.split(" ")[0]
            assert test_file.is_file(), f"{command}: {test_file} is missing"
            assert not name or f"def {name}(" in test_file.read_text(), f"{command}: no test {name} in {path}"
        elif not path.startswith(".ci/"):
            assert f"def {path}(" in Path(__file__).read_text(), f"{command}: no test {path} here"
