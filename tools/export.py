"""The archive: finished experiments copied to a folder that git keeps, so that the report redraws from a
fresh clone, without DVC's experiment refs or its cache.

    python -m tools.export [NAMES...] [--to DIR] [--no-commit]

Every experiment of HEAD (or those NAMES) goes to DIR/<name>/ (default archive/), in the layout
tools/runs.py reads: its params.yaml; run.json with the experiment's commit, its code commit (HEAD), when
it finished, and the host and the cores it ran on as far as this machine can say them (OMP_NUM_THREADS,
when set); and one folder per variant (those whose metrics/<variant>/summary.json the experiment's
dvc.lock lists) with the metrics files the run wrote, summary.json as it is (its
`shards`, which decided the bits, and `workers`, which decided the speed). A name
that another experiment's folder already holds gets a suffix (-2, -3, ...). Each run folder is committed
alone as soon as it is written, whatever else is staged (--no-commit: written only).
`python -m tools.sweep --archive DIR` does the same for each run of a sweep as it finishes.
"""
import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

from lenet_mixup import paths
from lenet_mixup.stage import UserError, atomic_output, run
from tools.runs import ARCHIVED, PARAMS_FILE, cache_dir, experiment_refs, git, locked_variants, read_output


def export(name, ref, archive, cache, host=None, threads=None):
    """Write experiment `ref` to archive/<name>/; returns that folder, or None if no variant finished."""
    sha = git("rev-parse", ref)
    texts = {v: {f: read_output(sha, f"{paths.METRICS}/{v}/{f}", cache) for f in ARCHIVED}
             for v in locked_variants(sha)}
    finished = {v: files for v, files in texts.items() if None not in files.values()}
    if not finished:
        return None
    folder = free_folder(Path(archive), name, sha)
    threads = threads or os.environ.get("OMP_NUM_THREADS")
    info = {"name": name, "experiment": sha, "code_commit": git("rev-parse", f"{sha}^"),
            "finished": git("log", "-1", "--format=%cI", sha), "host": host or platform.node(),
            "threads": int(threads) if str(threads).isdigit() else threads}
    with atomic_output(folder) as tmp:
        tmp.mkdir()
        (tmp / PARAMS_FILE).write_text(git("show", f"{sha}:{PARAMS_FILE}") + "\n")
        (tmp / "run.json").write_text(json.dumps(info, indent=2) + "\n")
        for variant, files in finished.items():
            (tmp / variant).mkdir()
            for file, text in files.items():
                (tmp / variant / file).write_text(text)
    return folder


def free_folder(archive, name, sha):
    """archive/<name>, or <name>-2, -3, ... where <name> holds another experiment."""
    folder, suffix = archive / name, 2
    while (folder / "run.json").is_file() and json.loads((folder / "run.json").read_text()).get("experiment") != sha:
        folder, suffix = archive / f"{name}-{suffix}", suffix + 1
    return folder


def commit(folder):
    """Commit the run folder alone, whatever else is staged; retried while another git command holds the
    index. Nothing to commit when it is as committed already."""
    if not git("status", "--porcelain", "--", str(folder)):
        return False
    finals = []
    for summary_file in sorted(folder.glob("*/summary.json")):  # a folder per variant
        summary = json.loads(summary_file.read_text())
        finals.append(f"{summary_file.parent.name} {summary.get('final_eval_acc', float('nan')):.4f}")
    message = f"Run {folder.name}: final eval accuracy {', '.join(finals)}"
    for attempt in range(30):
        result = subprocess.run(["git", "add", "--", str(folder)], capture_output=True, text=True)
        if result.returncode == 0:
            result = subprocess.run(["git", "commit", "-q", "-m", message, "--only", "--", str(folder)],
                                    capture_output=True, text=True)
        if result.returncode == 0:
            return True
        if "index.lock" not in result.stderr or attempt == 29:
            raise UserError(f"could not commit {folder}: {result.stderr.strip()}")
        time.sleep(2)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="experiments of HEAD (default: all of them)")
    parser.add_argument("--to", type=Path, default=Path("archive"), help="the archive folder (default archive)")
    parser.add_argument("--no-commit", action="store_true", help="write the run folders, do not commit them")
    args = parser.parse_args()
    head = git("rev-parse", "HEAD")
    refs = experiment_refs(head)
    unknown = [name for name in args.names if name not in refs]
    if unknown:
        raise UserError(f"no experiment {', '.join(unknown)} of HEAD ({head[:7]}); `dvc exp show` lists them")
    if not refs:
        raise UserError(f"HEAD ({head[:7]}) has no experiments to export: run a sweep first")
    cache = cache_dir()
    for name in args.names or sorted(refs):
        folder = export(name, refs[name], args.to, cache)
        if folder is None:
            print(f"{name}: no variant finished (its metrics are not in the cache): not exported")
            continue
        committed = not args.no_commit and commit(folder)
        print(f"{name} -> {folder}{' (committed)' if committed else ''}")


if __name__ == "__main__":
    run(main)
