"""tools/sweep.py on a local Ray (127.0.0.1): grids of tiny runs come back as DVC experiments.

Two sweeps of a finished tiny project, each shared by the tests that read it:
- on this machine, the workspace's DVC cache shared: alpha 0.2, 0.4 x seed 0, 1 on 2 workers;
- through a bare git repository and a local-folder DVC remote (the stand-ins for a cluster's shared
  remotes): alpha 0.4 and -1, the worker of alpha 0.4 killed mid-run.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lenet_mixup.params import read_yaml
from tests.conftest import ROOT, Project, default_sigint, dvc_env, project_params
from tools.sweep import SharedStages, apply, expand, plan, resources
from tools.sweep_report import experiments

GRID = ["-S", "mixup.alpha=0.2,0.4", "-S", "train.seed=0,1"]
TIMING = ("train_seconds", "examples_per_sec")


def env():
    """Stage commands on one torch thread (as the sweep's runs with --threads 1), the sweep from this checkout,
    and Ray on this machine's loopback alone, drivers too (a driver on the network address finds no node)."""
    return {**dvc_env(), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def sweep(project, *args, tmpdir=None, **popen):
    command = [sys.executable, "-m", "tools.sweep", *args, "--workers", "2", "--threads", "1",
               *(["--tmpdir", str(tmpdir)] if tmpdir else [])]
    if popen:
        return subprocess.Popen(command, cwd=project.path, env=env(), text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, **popen)
    return subprocess.run(command, cwd=project.path, env=env(), text=True, capture_output=True, timeout=900)


def copy_project(template, path):
    shutil.copytree(template.path, path, symlinks=True)
    return Project(path)


def finished_lines(output):
    """{run name: its line} of the sweep's `[i/n] name ...` lines."""
    return {m.group(1): line for line in output.splitlines() if (m := re.match(r"\[\d+/\d+\] (\S+)", line))}


def exp_text(project, name, path):
    """A file as experiment `name` committed it."""
    refs = project.run("git", "for-each-ref", "--format=%(refname)", f"refs/exps/*/*/{name}").stdout.split()
    assert len(refs) == 1, f"experiment {name}: refs {refs}"
    return project.run("git", "show", f"{refs[0]}:{path}").stdout


def shown(project):
    """{experiment name: {metrics file: its data}}, as `dvc exp show --json` gives them."""
    found = {}
    for entry in json.loads(project.dvc("exp", "show", "--json").stdout):
        for exp in entry.get("experiments") or []:
            for rev in exp.get("revs") or []:
                found[rev["name"]] = {path: m.get("data") for path, m in (rev["data"].get("metrics") or {}).items()}
    return found


def without_timing(summary):
    return {k: v for k, v in summary.items() if k not in TIMING}


def results(project, name):
    """An experiment's metrics that do not depend on time: both summaries (less timing) and evaluations."""
    metrics = shown(project)[name]
    return {v: {"summary": without_timing(metrics[f"metrics/{v}/summary.json"]),
                "evaluation": metrics[f"metrics/{v}/evaluation.json"]}
            for v in ("baseline", "mixup")}


def processes():
    """{pid: (cmdline, cwd)} of this machine's processes we may read."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            found[int(proc.name)] = ((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(),
                                     os.readlink(proc / "cwd"))
        except OSError:
            continue
    return found


def test_the_grid_is_crossed_as_dvc_does_and_runs_done_are_matched_by_params():
    params = read_yaml(project_params())
    runs = expand(["mixup.alpha=0.2,0.4", "train.seed=range(0,2)", "evaluate.fgsm_eps_255=[1,16]"], params)
    assert [r.overrides[:2] for r in runs] == [["mixup.alpha=0.2", "train.seed=0"], ["mixup.alpha=0.2", "train.seed=1"],
                                               ["mixup.alpha=0.4", "train.seed=0"], ["mixup.alpha=0.4", "train.seed=1"]]
    assert runs[0].values == {"mixup.alpha": 0.2, "train.seed": 0, "evaluate.fgsm_eps_255": [1, 16]}
    runs = expand(["mixup.alpha=0.2,0.4", "train.seed=0,1"], params)
    existing = {"old": apply(params, runs[0].values), "alpha0.4-seed0": params}  # that name, other params
    todo, done = plan(runs, params, existing)
    assert [r.name for r in done] == ["old"]
    assert [r.name for r in todo] == ["alpha0.2-seed1", "alpha0.4-seed0-2", "alpha0.4-seed1"]
    with pytest.raises(Exception, match="params.yaml has no such key"):
        expand(["mixup.alhpa=1"], params)


def test_runs_that_would_compute_the_same_stage_take_turns(tmp_path):
    params = read_yaml(project_params())
    dvc_yaml = read_yaml((ROOT / "dvc.yaml").read_text())
    head_computed = {"stages": {name: {} for name in dvc_yaml["stages"]}}
    runs = expand(["mixup.alpha=0.2,0.4", "train.seed=0,1"], params)
    shared = SharedStages(dvc_yaml, head_computed, params, ["mixup.alpha", "train.seed"], cache=tmp_path)
    for r in runs:
        r.needs = shared.needs(r)
    a2s0, a2s1, a4s0, a4s1 = runs
    assert "train_baseline" not in {stage for stage, _ in a2s0.needs}  # seed 0 is HEAD's: computed
    assert ("train_baseline", (("train.seed", "1"),)) in a2s1.needs & a4s1.needs
    assert shared.may_start(a4s0, [a2s0, a2s1]) and not shared.may_start(a4s1, [a2s1])
    shared.done |= a2s1.needs  # seed 1's baseline trained: now in the run-cache
    assert shared.may_start(a4s1, [a4s0])
    nothing_computed = SharedStages(dvc_yaml, None, params, ["mixup.alpha"], cache=tmp_path)
    first, second = expand(["mixup.alpha=0.2,0.4"], params)
    first.needs, second.needs = nothing_computed.needs(first), nothing_computed.needs(second)
    assert not nothing_computed.may_start(second, [first])  # both would prepare the data: one prepares it


class FakeRay:
    def __init__(self, cpus, gpus=0):
        self.total = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}

    def cluster_resources(self):
        return self.total

    def nodes(self):
        return [{"Alive": True, "Resources": self.total}]


def test_one_gpu_per_run_where_there_are_gpus_and_threads_that_never_oversubscribe():
    assert resources(FakeRay(2), None, None, None) == (2, 1, 0)
    assert resources(FakeRay(16), 4, None, None) == (4, 4, 0)
    assert resources(FakeRay(16, gpus=8), None, None, None) == (8, 2, 1)
    assert resources(FakeRay(16, gpus=1), None, None, 0.5) == (2, 8, 0.5)
    with pytest.raises(Exception, match="no Ray node has more than 16 CPUs"):
        resources(FakeRay(16), 1, 32, None)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, finished_template):
    project = copy_project(finished_template, tmp_path_factory.mktemp("local") / "project")
    result = sweep(project, *GRID)
    assert result.returncode == 0, result.stdout + result.stderr
    return project, result.stdout


def test_four_runs_on_two_workers_come_back_as_experiments(local_sweep):
    project, out = local_sweep
    lines = finished_lines(out)
    assert sorted(lines) == ["alpha0.2-seed0", "alpha0.2-seed1", "alpha0.4-seed0", "alpha0.4-seed1"], out
    assert "4 of 4 runs done" in out and "2 at a time, 1 torch thread, on local Ray on 127.0.0.1" in out
    assert re.search(r"alpha0.4-seed1  mixup.alpha=0.4 train.seed=1  peak/final eval acc: "
                     r"baseline 0\.\d{4}/0\.\d{4}  mixup 0\.\d{4}/0\.\d{4}  \d+ s", lines["alpha0.4-seed1"])
    # Seed 1's baseline is trained by one run and restored from the shared run-cache by the other;
    # seed 0's is the committed one. Every run trains its own mixup variant.
    assert sum("train_baseline" in line for line in lines.values()) == 1, out
    assert all("train_mixup" in line for line in lines.values()), out

    shown = json.loads(project.dvc("exp", "show", "--json").stdout)
    found = experiments(shown)
    grid = [(0.2, 0), (0.2, 1), (0.4, 0), (0.4, 1)]
    assert set(grid) <= set(found)
    mixups = [json.dumps(found[key]["mixup"]["summary"], sort_keys=True) for key in grid]
    assert len(set(mixups)) == 4, "each run has its own metrics"
    assert found[(0.2, 1)]["baseline"] == found[(0.4, 1)]["baseline"] != found[(0.2, 0)]["baseline"]
    for name, alpha, seed in [("alpha0.2-seed1", 0.2, 1), ("alpha0.4-seed0", 0.4, 0)]:
        params = exp_text(project, name, "params.yaml")
        assert f"alpha: {alpha}" in params and f"seed: {seed}" in params
    assert project.run("git", "status", "--porcelain").stdout == "", "the workspace is untouched"


def test_a_run_of_the_sweep_equals_the_same_experiment_run_alone(local_sweep, finished_template, tmp_path):
    project, _ = local_sweep
    alone = copy_project(finished_template, tmp_path / "alone")  # its own cache: nothing restored from the sweep
    for name, overrides in [("alpha0.2-seed1", ["mixup.alpha=0.2", "train.seed=1"]),
                            ("alpha0.4-seed0", ["mixup.alpha=0.4", "train.seed=0"])]:  # not the last run's seed
        args = [a for o in overrides for a in ("-S", o)]
        result = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "-n", name, *args], cwd=alone.path,
                                env=env(), capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Running stage 'train_mixup'" in result.stdout
        assert results(alone, name) == results(project, name)


def test_the_experiments_work_with_dvc_and_the_sweep_report(local_sweep, tmp_path):
    project = copy_project(local_sweep[0], tmp_path / "project")
    report = subprocess.run([sys.executable, "-m", "tools.sweep_report"], cwd=project.path, env=env(),
                            capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    assert "alpha 0.2 | alpha 0.4" in project.read("reports/sweep.md") and "(n=2)" in project.read("reports/sweep.md")
    diff = project.dvc("metrics", "diff", "alpha0.2-seed0", "alpha0.4-seed1").stdout
    assert "metrics/mixup/summary.json" in diff and "final_eval_acc" in diff
    plots = project.dvc("plots", "diff", "alpha0.2-seed0", "alpha0.4-seed1", "-o", str(tmp_path / "plots"))
    assert (tmp_path / "plots" / "index.html").is_file(), plots.stdout
    project.dvc("exp", "apply", "alpha0.4-seed1")
    assert "alpha: 0.4" in project.read("params.yaml") and "seed: 1" in project.read("params.yaml")
    summary = shown(project)["alpha0.4-seed1"]["metrics/mixup/summary.json"]
    assert json.loads(project.read("metrics/mixup/summary.json")) == summary
    assert project.dvc("status").stdout.strip() == "Data and pipelines are up to date."  # outputs came back too


def test_the_same_sweep_again_skips_every_run_done(local_sweep):
    project, _ = local_sweep
    result = sweep(project, *GRID)
    assert result.returncode == 0, result.stderr
    assert "4 runs, 4 already done, 0 to run" in result.stdout
    assert "Ray" not in result.stdout + result.stderr  # not even started


def test_a_dirty_pipeline_is_refused_and_the_grid_checked(local_sweep, tmp_path):
    project = copy_project(local_sweep[0], tmp_path / "project")
    project.set_params(mixup={"alpha": 0.5})
    result = sweep(project, "-S", "mixup.alpha=0.3")
    assert result.returncode == 1
    assert result.stderr.startswith("error: uncommitted changes to params.yaml: every run is a clone of commit ")
    project.run("git", "checkout", "--", "params.yaml")
    result = sweep(project, "-S", "mixup.alhpa=0.3")
    assert result.returncode == 1 and "error: -S mixup.alhpa: params.yaml has no such key" in result.stderr


def test_ctrl_c_stops_every_run_and_leaves_the_workspace_untouched(local_sweep, tmp_path):
    project, _ = local_sweep
    refs = project.run("git", "for-each-ref", "refs/exps").stdout
    temp = tmp_path / "runs"
    temp.mkdir()
    proc = sweep(project, "-S", "mixup.alpha=0.7,0.8", tmpdir=temp, start_new_session=True,
                 preexec_fn=default_sigint)
    deadline = time.time() + 300
    while not any("stages." in cmd and cwd.startswith(str(temp)) for cmd, cwd in processes().values()):
        assert proc.poll() is None and time.time() < deadline, "no stage started"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C does: the whole foreground process group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "interrupted: stopping 2 runs" in err
    assert list(temp.iterdir()) == [], "the runs' temp folders are removed"
    assert not [cmd for cmd, cwd in processes().values() if cwd.startswith(str(temp))], "no process left behind"
    assert project.run("git", "for-each-ref", "refs/exps").stdout == refs
    assert project.run("git", "status", "--porcelain").stdout == ""


def kill_worker_while_a_stage_runs(name, temp):
    """SIGKILL the Ray worker of run `name` if one of its stages runs now; return the worker's pid.

    The run's supervisor names its worker in its command line (the spec, JSON)."""
    running = processes().values()
    if not any("stages." in cmd and cwd.startswith(str(temp)) and f"-{name}-" in cwd for cmd, cwd in running):
        return None
    supervisor = next(cmd for cmd, _ in running if '"worker_pid"' in cmd and f'"name": "{name}"' in cmd)
    worker = int(re.search(r'"worker_pid": (\d+)', supervisor).group(1))
    os.kill(worker, signal.SIGKILL)
    return worker


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray cluster started as the README's Cluster section starts one (`ray start --head`), on loopback
    only; the sweep finds it with `--address auto`."""
    import socket
    with socket.socket() as probe:  # a free port: with --port=0 a driver's `--address auto` finds no GCS
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray = str(Path(sys.executable).parent / "ray")
    loopback = env()
    started = subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                              "--include-dashboard=false", "--disable-usage-stats"], env=loopback,
                             capture_output=True, text=True, timeout=300)
    if started.returncode != 0:
        subprocess.run([ray, "stop", "--force"], env=loopback, capture_output=True, timeout=300)
        pytest.fail(f"`ray start --head` failed:\n{started.stdout[-2000:]}\n{started.stderr[-2000:]}")
    yield
    subprocess.run([ray, "stop", "--force"], env=loopback, capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def remote_sweep(tmp_path_factory, finished_template, ray_cluster):
    """alpha 0.4 and -1 through the stand-in remotes, on a running Ray cluster (--address auto); alpha 0.4's
    Ray worker killed while a stage runs."""
    base = tmp_path_factory.mktemp("remote")
    project = copy_project(finished_template, base / "project")
    project.run("git", "init", "-q", "--bare", str(base / "origin.git"))
    project.run("git", "remote", "add", "origin", str(base / "origin.git"))
    project.dvc("remote", "add", "-d", "shared", str(base / "dvc-remote"))
    project.commit("the shared remotes")
    project.run("git", "push", "-q", "origin", "HEAD:main")
    temp = base / "runs"
    temp.mkdir()
    proc = sweep(project, "--address", "auto", "--remote", "origin", "-S", "mixup.alpha=0.4,-1", tmpdir=temp,
                 start_new_session=True)
    killed, deadline = None, time.time() + 300
    while killed is None:
        assert proc.poll() is None and time.time() < deadline, f"alpha 0.4 never ran a stage: {proc.communicate()}"
        killed = kill_worker_while_a_stage_runs("alpha0.4", temp)
        time.sleep(0.05)
    out, err = proc.communicate(timeout=900)
    return project, base, proc.returncode, out, err, killed


def test_a_killed_worker_is_retried_and_its_run_completes(remote_sweep, local_sweep):
    project, base, code, out, err, killed = remote_sweep
    assert not Path(f"/proc/{killed}").exists()
    line = finished_lines(out)["alpha0.4"]
    assert "FAILED" not in line and "train_mixup" in line, out + err
    assert results(project, "alpha0.4") == results(local_sweep[0], "alpha0.4-seed0")  # as if nothing happened
    assert [p.name for p in (base / "runs").iterdir()] == ["lenet-mixup-sweep-cache"], "temp folders removed"


def test_a_run_with_bad_params_is_reported_and_the_others_complete(remote_sweep):
    project, _, code, out, err, _ = remote_sweep
    assert code == 1
    assert "1 of 2 runs done" in out and err.strip().endswith("error: 1 run failed: alpha-1")
    assert re.search(r"^\[\d/2\] alpha-1  FAILED after \d+ s  mixup.alpha=-1: train_mixup: error: params.yaml: "
                     r"mixup.alpha = -1 is not allowed; it must be a number > 0$", out, re.M), out
    assert "    | ERROR: failed to reproduce 'train_mixup'" in out  # the log's tail follows the line
    assert (project.path / ".dvc/tmp/sweep/alpha-1.log").is_file()
    names = [e["name"] for e in json.loads(project.dvc("exp", "show", "--json").stdout)[1]["experiments"]]
    assert names == ["alpha0.4"]


def test_an_alpha_only_grid_never_trains_the_baseline(remote_sweep):
    project, _, _, out, _, _ = remote_sweep
    assert not any("train_baseline" in line for line in finished_lines(out).values())
    logs = [p.read_text() for p in (project.path / ".dvc/tmp/sweep").iterdir()]
    assert len(logs) == 2 and all("Stage 'train_baseline' didn't change, skipping" in log for log in logs)
    assert not any("Running stage 'train_baseline'" in log for log in logs)


def test_a_fresh_clone_pulls_every_experiment_from_the_remotes(remote_sweep, tmp_path):
    project, base, *_ = remote_sweep
    clone = Project(tmp_path / "clone")
    subprocess.run(["git", "clone", "-q", "-b", "main", str(base / "origin.git"), str(clone.path)], check=True)
    clone.dvc("exp", "pull", "origin", "--rev", "HEAD")
    found = experiments(json.loads(clone.dvc("exp", "show", "--json").stdout))
    assert found[(0.4, 0)]["mixup"]["summary"] == shown(project)["alpha0.4"]["metrics/mixup/summary.json"]
    clone.dvc("exp", "apply", "alpha0.4")
    assert (clone.path / "models/mixup/final.pt").is_file() and (clone.path / "data/prepared/train_x.npy").is_file()
    assert clone.dvc("status").stdout.strip() == "Data and pipelines are up to date."
