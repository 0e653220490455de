"""Sweep launchers side by side: the same tiny sweep run three ways, in one go.

    python -m bench.sweep_speed [-S 'mixup.alpha=0.2,0.4' -S 'train.seed=0,1'] [--workers 2] [--threads 1]
                                [--project DIR] [--timeout SECONDS]

  one by one   `dvc exp run -S ...` for each combination, one after another
  dvc queue    `dvc exp run --queue -S ... -S ...`, then `dvc queue start -j WORKERS` until `dvc queue status`
               shows no run queued or running (workers that stop with runs still queued are started again,
               and the restarts printed)
  tools.sweep  `python -m tools.sweep -S ... -S ... --workers WORKERS` (a local Ray on 127.0.0.1)

Each way starts from its own copy of one finished project (the pipeline run once with HEAD's params,
committed), with its own DVC cache, so no way restores what another computed. The project is the
tests' tiny one (tests/conftest.py: a synthetic archive of 250 training images, 2 epochs) unless
--project names a finished, committed one. Every run gets --threads cores (OMP_NUM_THREADS: the speed only).

Printed per way: the wall time, its ratio to one by one, the training stages' own seconds (the
train_seconds of every distinct summary.json the sweep's experiments hold, HEAD's excluded: what had to
be trained), and the launcher's overhead per run = (wall time x runs at a time - training seconds) /
runs: the seconds of a worker slot each run spent on anything but training (starting Python and DVC,
cloning, checking out, evaluating, plotting, bringing the experiment back, waiting).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lenet_mixup.params import read_yaml
from tools.runs import captured, variant_of
from tools.sweep import expand

ROOT = Path(__file__).resolve().parents[1]
GRID = ["mixup.alpha=0.2,0.4", "train.seed=0,1"]
QUEUE_STALL_S = 30  # runs queued and no worker for this long: the workers stopped early, start them again


def environment(threads):
    """This interpreter's python and dvc first on PATH, each run's cores fixed, tools.sweep importable."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}


def call(args, cwd, env, timeout=None):
    try:
        result = captured(args, cwd=cwd, env=env, timeout=timeout)  # files, not pipes: the queue's daemons
    except subprocess.TimeoutExpired:
        sys.exit(f"error: `{' '.join(map(str, args))}` took over {timeout} s (--timeout) in {cwd}")
    if result.returncode != 0:
        output = result.stdout[-3000:] + result.stderr[-3000:]
        sys.exit(f"error: `{' '.join(map(str, args))}` failed in {cwd}:\n{output}")
    return result.stdout


def dvc(*args, cwd, env, timeout=None):
    return call([sys.executable, "-m", "dvc", *args], cwd, env, timeout)


def tiny_project(folder, env):
    """The tests' tiny project, its pipeline run and committed."""
    from tests.conftest import new_project, write_archive
    archive = folder / "cifar-10-python.tar.gz"
    md5 = write_archive(archive)
    project = new_project(folder / "template", (archive, md5)).path
    dvc("repro", "-q", cwd=project, env=env)
    call(["git", "add", "-A"], project, env)
    call(["git", "commit", "-qm", "first run"], project, env)
    return project


def one_by_one(project, grid, workers, env, timeout):
    for run in expand(grid, read_yaml((project / "params.yaml").read_text())):
        dvc("exp", "run", *[a for override in run.overrides for a in ("-S", override)], cwd=project, env=env,
            timeout=timeout)


def dvc_queue(project, grid, workers, env, timeout):
    """Queue the grid, start the workers, and wait until no run is queued or running. DVC's workers stop
    when they find the queue empty; one can stop with runs still queued (on a busy machine, say), and then
    `dvc queue start` again picks them up, as a user would: that counts as a restart."""
    dvc("exp", "run", "--queue", *[a for override in grid for a in ("-S", override)], cwd=project, env=env)
    dvc("queue", "start", "-j", str(workers), cwd=project, env=env)
    deadline, restarts, no_worker_since, status = time.monotonic() + timeout, 0, None, ""
    while True:
        if (answer := queue_status(project, env)) is not None:
            status = answer
            if not re.search(r"\b(Queued|Running)\b", status):
                return restarts
            stalled = "Queued" in status and "Worker status: 0 active, 0 idle" in status
            no_worker_since = (no_worker_since or time.monotonic()) if stalled else None
            if no_worker_since and time.monotonic() - no_worker_since > QUEUE_STALL_S:
                dvc("queue", "start", "-j", str(workers), cwd=project, env=env)
                restarts, no_worker_since = restarts + 1, None
        if time.monotonic() > deadline:
            dvc("queue", "stop", "--kill", cwd=project, env=env)
            sys.exit(f"error: the queue still had runs after {timeout} s (--timeout), with {restarts} restart(s):\n"
                     f"{status}\n{worker_logs(project)}")
        time.sleep(1)


def queue_status(project, env):
    """`dvc queue status`, or None where it failed: it reads files the workers are writing, and on a busy
    machine it sometimes reads one half-written (`Expecting value: line 1 column 1`); the next poll reads
    it whole."""
    result = captured([sys.executable, "-m", "dvc", "queue", "status"], cwd=project, env=env)
    return result.stdout if result.returncode == 0 else None


def worker_logs(project):
    """The end of each queue worker's log, for an error message."""
    logs = sorted((project / ".dvc/tmp/exps/celery").glob("*.out"))
    return "\n".join(f"{log.name}:\n{log.read_text()[-1500:]}" for log in logs)


def ray_sweep(project, grid, workers, env, timeout):
    call([sys.executable, "-m", "tools.sweep", *[a for override in grid for a in ("-S", override)],
          "--workers", str(workers), "--threads", env["OMP_NUM_THREADS"]], project, env, timeout)


WAYS = [("one by one (dvc exp run)", one_by_one, False),
        ("dvc queue start -j {workers}", dvc_queue, True),
        ("python -m tools.sweep --workers {workers}", ray_sweep, True)]


def trained(project, env):
    """(experiments of HEAD, seconds of training they needed): train_seconds over distinct summaries."""
    shown = json.loads(dvc("exp", "show", "--json", cwd=project, env=env))
    head = next(entry for entry in shown if entry.get("rev") != "workspace")
    seen = {json.dumps(summary, sort_keys=True) for summary in summaries(head)}
    runs, seconds = 0, 0.0
    for exp in head.get("experiments") or []:
        for rev in exp.get("revs") or []:
            runs += 1
            for summary in summaries(rev):
                if json.dumps(summary, sort_keys=True) not in seen:
                    seen.add(json.dumps(summary, sort_keys=True))
                    seconds += summary["train_seconds"]
    return runs, seconds


def summaries(entry):
    """The summary.json of every variant a `dvc exp show --json` row holds (metrics/<variant>/summary.json)."""
    metrics = (entry.get("data") or {}).get("metrics") or {}
    return [m["data"] for path, m in metrics.items() if variant_of(path, "summary.json") and (m or {}).get("data")]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-S", "--set-param", action="append", dest="grid", metavar="KEY=VALUES",
                        help=f"the sweep, as `dvc exp run -S` (default: {' '.join('-S ' + g for g in GRID)})")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time for the queue and the sweep")
    parser.add_argument("--threads", type=int, default=1, help="cores per run (OMP_NUM_THREADS)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds a way may take before this gives up")
    parser.add_argument("--project", type=Path, help="a finished, committed project to copy (default: the tiny one)")
    args = parser.parse_args()
    grid = args.grid or GRID
    env = environment(args.threads)
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as scratch:
        scratch = Path(scratch)
        template = args.project.resolve() if args.project else tiny_project(scratch, env)
        runs = len(expand(grid, read_yaml((template / "params.yaml").read_text())))
        print(f"{runs} run{'s' * (runs != 1)} ({' '.join('-S ' + g for g in grid)}), {args.workers} at a time "
              f"for the queue and the sweep, {args.threads} core(s) per run; {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f} at the start", flush=True)
        rows = []
        for label, way, parallel in WAYS:
            project = scratch / f"way{len(rows)}"
            shutil.copytree(template, project, symlinks=True)
            start = time.perf_counter()
            restarts = way(project, grid, args.workers, env, args.timeout)
            wall = time.perf_counter() - start
            if way is dvc_queue:  # its idle workers, stopped untimed, so that they do not load the next way
                dvc("queue", "stop", cwd=project, env=env)
            done, training = trained(project, env)
            slots = args.workers if parallel else 1
            rows.append((label.format(workers=args.workers), wall, training, (wall * slots - training) / runs, done))
            print(f"  {rows[-1][0]}: {wall:.1f} s, {done} experiments"
                  + (f" (its workers stopped early: started again {restarts} time(s))" if restarts else ""), flush=True)
        print(f"\n{'way':44} {'wall s':>8} {'ratio':>7} {'training s':>11} {'overhead/run s':>15} {'experiments':>12}")
        for label, wall, training, overhead, done in rows:
            print(f"{label:44} {wall:8.1f} {wall / rows[0][1]:7.2f} {training:11.1f} {overhead:15.1f} {done:12}")
        print(f"ratio: wall time / one by one's. overhead per run: (wall x runs at a time - training s) / {runs} runs")
        print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
