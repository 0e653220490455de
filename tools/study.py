"""The mixup study: every configuration of PLAN trained and evaluated once, each result committed.

    python -m tools.study run [--rev HEAD] [--prepared data/prepared] [--only GLOB] [--no-commit]
    python -m tools.study status
    python -m tools.study report          (tools/study_report.py: statistics, figure, table)

A run is one training stage and its evaluation, `python -m stages.train <variant>` then
`python -m stages.evaluate <variant>`, in a folder of its own under build/study/<run>/ with its own
params.yaml and the prepared data linked in. The stages run from the code of one commit (`--rev`),
exported apart, so the study is never disturbed by edits to the working tree and every result
names the exact code that produced it. A finished run's params and metrics files go to
study/runs/<run>/ and are committed at once: a study split across sessions or machines loses
nothing, and the report redraws from a fresh clone without rerunning anything. A run already in
study/runs/ is skipped; a run that was interrupted resumes after its last complete epoch (the
training stage's own resume state, kept in its folder).
"""
import argparse
import fnmatch
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from lenet_mixup.params import dump_yaml, read_yaml

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "study" / "runs"
WORK = ROOT / "build" / "study"
RESULT_FILES = ("summary.json", "epochs.tsv", "evaluation.json", "fgsm.tsv", "reliability.tsv")
SEEDS, ALPHA_SEEDS = range(5), range(3)


def run_name(variant, seed, alpha=None, precision="fp32"):
    return "-".join([variant, *([f"alpha{alpha}"] if variant == "mixup" else []), precision, f"seed{seed}"])


def plan():
    """The study, most important first: baseline vs mixup (alpha 1) over 5 seeds, then alpha, then bf16."""
    runs = []

    def add(variant, seed, alpha=None, precision="fp32"):
        overrides = {"train.seed": seed, **({"mixup.alpha": alpha} if variant == "mixup" else {}),
                     **({"train.precision": precision} if precision != "fp32" else {})}
        runs.append({"name": run_name(variant, seed, alpha, precision), "variant": variant, "seed": seed,
                     "alpha": alpha, "precision": precision, "overrides": overrides})
    for seed in SEEDS:
        add("baseline", seed)
        add("mixup", seed, 1.0)
    for alpha in (0.2, 0.4, 2.0):
        for seed in ALPHA_SEEDS:
            add("mixup", seed, alpha)
    for seed in ALPHA_SEEDS:
        add("baseline", seed, precision="bf16")
        add("mixup", seed, 1.0, precision="bf16")
    return runs


def git(*args, cwd=ROOT):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def export_code(rev):
    """The tree of commit `rev`, exported once to build/study/code-<commit>/; returns (path, commit)."""
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    code = WORK / f"code-{commit[:12]}"
    if not code.is_dir():
        tmp = code.with_name(code.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        tmp.rename(code)
    return code, commit


def prepared_md5(prepared):
    """One checksum over the prepared arrays, so that every result names the data it was trained on."""
    h = hashlib.md5()
    for name in sorted(p.name for p in prepared.iterdir() if p.is_file()):
        h.update(name.encode())
        with open(prepared / name, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def run_params(code, overrides):
    """The commit's params.yaml with the run's overrides; an override must name an existing key."""
    params = read_yaml((code / "params.yaml").read_text())
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        if key not in params.get(section, {}):
            sys.exit(f"error: {code.name}/params.yaml has no {dotted}: the study needs a newer commit (--rev)")
        params[section][key] = value
    return params


def execute(run, code, prepared):
    """Train and evaluate one run in build/study/<run>/; returns its wall time in seconds."""
    work = WORK / run["name"]
    (work / "data").mkdir(parents=True, exist_ok=True)
    link = work / "data" / "prepared"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(prepared.resolve(), target_is_directory=True)
    (work / "params.yaml").write_text(dump_yaml(run_params(code, run["overrides"])))
    env = {**os.environ, "PYTHONPATH": str(code)}
    start = time.time()
    with open(work / "log.txt", "a") as log:
        for stage in ("train", "evaluate"):
            marker = work / f".{stage}.done"  # a rerun after an interrupted evaluation does not retrain
            if marker.is_file() and marker.read_text() == (work / "params.yaml").read_text():
                continue
            command = [sys.executable, "-m", f"stages.{stage}", run["variant"]]
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            proc = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
            for line in proc.stdout:
                log.write(line)
                log.flush()
                print(f"  {run['name']}: {line}", end="", flush=True)
            if proc.wait() != 0:
                raise RuntimeError(f"`{' '.join(command[1:])}` exited with {proc.returncode}; see {work / 'log.txt'}")
            marker.write_text((work / "params.yaml").read_text())
    return time.time() - start


def record(run, code, commit, data_md5, seconds):
    """Copy the run's params and metrics files to study/runs/<run>/, with where and how it ran."""
    work, out = WORK / run["name"], RUNS / run["name"]
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy(work / "params.yaml", tmp / "params.yaml")
    for name in RESULT_FILES:
        shutil.copy(work / "metrics" / run["variant"] / name, tmp / name)
    info = {**{k: run[k] for k in ("name", "variant", "seed", "alpha", "precision")},
            "code_commit": commit, "prepared_md5": data_md5, "wall_seconds": round(seconds, 1),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"), "torch": torch.__version__,
            "host": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"}
    (tmp / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def commit_run(run):
    """Commit study/runs/<run>/ alone, whatever else is staged; retried while another git command holds the index."""
    path = str((RUNS / run["name"]).relative_to(ROOT))
    summary = json.loads((RUNS / run["name"] / "summary.json").read_text())
    message = (f"Study: {run['name']} (peak eval acc {summary['peak_eval_acc']:.4f}, "
               f"final {summary['final_eval_acc']:.4f})")
    for attempt in range(30):
        try:
            git("add", path)
            git("commit", "-q", "-m", message, "--only", path)
            return
        except subprocess.CalledProcessError as e:
            if "index.lock" not in e.stderr or attempt == 29:
                raise
            time.sleep(2)


def done(run):
    return (RUNS / run["name"] / "run.json").is_file()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run", help="run every planned run not yet in study/runs/")
    go.add_argument("--rev", default="HEAD", help="the commit whose code trains (default HEAD)")
    go.add_argument("--prepared", type=Path, default=ROOT / "data" / "prepared",
                    help="the prepared arrays (`dvc repro prepare` writes them; default data/prepared)")
    go.add_argument("--only", default="*", help="run only the runs whose name matches this glob")
    go.add_argument("--no-commit", action="store_true", help="record results in study/runs/ but do not commit them")
    sub.add_parser("status", help="list the plan: done or to do")
    sub.add_parser("report", help="the statistics, figure and table from study/runs/ (tools.study_report; "
                   "`report --help` for its options)", add_help=False)
    if sys.argv[1:2] == ["report"]:  # the report parses its own options (--runs, --out)
        from tools import study_report
        return study_report.main(sys.argv[2:])
    args = parser.parse_args()
    runs = plan()
    if args.command == "status":
        for run in runs:
            print(f"{'done' if done(run) else 'to do':6} {run['name']}")
        print(f"{sum(map(done, runs))} of {len(runs)} runs done")
        return
    todo = [r for r in runs if not done(r) and fnmatch.fnmatch(r["name"], args.only)]
    if not (args.prepared / "train_x.npy").is_file():
        sys.exit(f"error: no prepared data in {args.prepared}: run `dvc repro prepare` (or pass --prepared)")
    code, commit = export_code(args.rev)
    data_md5 = prepared_md5(args.prepared)
    print(f"{len(todo)} runs to do, code of commit {commit[:12]}, prepared data md5 {data_md5}", flush=True)
    failed = []
    for i, run in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {run['name']}", flush=True)
        try:
            seconds = execute(run, code, args.prepared)
        except RuntimeError as e:
            print(f"[{i}/{len(todo)}] {run['name']} FAILED: {e}", flush=True)
            failed.append(run["name"])
            continue
        record(run, code, commit, data_md5, seconds)
        if not args.no_commit:
            commit_run(run)
        summary = json.loads((RUNS / run["name"] / "summary.json").read_text())
        print(f"[{i}/{len(todo)}] {run['name']} done in {seconds:.0f} s: peak eval acc "
              f"{summary['peak_eval_acc']:.4f}, final {summary['final_eval_acc']:.4f}", flush=True)
    if failed:
        sys.exit(f"error: {len(failed)} runs failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
