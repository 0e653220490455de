"""Sweep report: peak/final eval accuracy, ECE and FGSM accuracy against mixup's alpha, over seeds.

Run by hand after a sweep (it reads experiments, so it is not a pipeline stage):
    dvc exp run --queue -S 'mixup.alpha=0.1,0.2,0.4,1.0,2.0' -S 'train.seed=0,1,2'
    dvc queue start -j 2        # wait until `dvc queue status` shows nothing queued or running
    python -m tools.sweep_report
It reads `dvc exp show --json` (or a saved copy: --json FILE) and writes reports/sweep.png and
reports/sweep.md: each metric's mean and standard deviation per alpha, every seed as a point, and the
baseline (which alpha does not touch) as a horizontal line with its own spread over seeds.
"""
import argparse
import json
import statistics
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lenet_mixup.stage import UserError, atomic_output, run  # noqa: E402

REPORTS = Path("reports")
METRICS = [  # (label, file, path inside it)
    ("peak eval accuracy", "summary", ("peak_eval_acc",)),
    ("final eval accuracy", "summary", ("final_eval_acc",)),
    ("ECE (final weights)", "evaluation", ("final", "ece")),
    ("FGSM accuracy at the largest epsilon", "evaluation", ("final", "fgsm_acc", None)),
]


def experiments(shown):
    """Runs in `dvc exp show --json` output with complete metrics, one per (alpha, seed).

    Only runs whose other params match the first one listed (the workspace) are kept: a sweep
    compares alphas and seeds, not, say, runs of a different length.
    """
    found, reference = {}, []

    def visit(node):
        if isinstance(node, dict):
            data = node.get("data")
            if isinstance(data, dict) and "params" in data and "metrics" in data:
                record(data)
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    def record(data):
        params = data["params"].get("params.yaml", {}).get("data", {})
        metrics = {path: m.get("data", {}) for path, m in (data.get("metrics") or {}).items()}
        try:
            key = (params["mixup"]["alpha"], params["train"]["seed"])
            rest = json.dumps({**params, "mixup": {**params["mixup"], "alpha": None},
                               "train": {**params["train"], "seed": None}}, sort_keys=True)
            if not reference:
                reference.append(rest)
            if rest != reference[0]:
                return
            found.setdefault(key, {v: {f: metrics[f"metrics/{v}/{f}.json"] for f in ("summary", "evaluation")}
                                   for v in ("baseline", "mixup")})
        except (KeyError, TypeError):
            pass  # a run without finished metrics (queued, failed) has nothing to report

    visit(shown)
    return found


def value(run, file, path):
    node = run[file]
    for key in path:
        node = node[key] if key is not None else node[max(node, key=lambda k: float(k.split("/")[0]))]
    return node


def spread(values):
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def report(found):
    alphas = sorted({a for a, _ in found})
    seeds = sorted({s for _, s in found})
    baseline = {s: next(r["baseline"] for (a, s2), r in found.items() if s2 == s) for s in seeds}
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    lines = ["| metric | " + " | ".join(f"alpha {a}" for a in alphas) + " | baseline |",
             "|---|" + "---|" * (len(alphas) + 1)]
    for ax, (label, file, path) in zip(axes.flat, METRICS, strict=True):
        base = spread([value(baseline[s], file, path) for s in seeds])
        ax.axhline(base[0], color="#1f77b4", lw=2, label=f"baseline ({len(seeds)} seeds)")
        ax.axhspan(base[0] - base[1], base[0] + base[1], color="#1f77b4", alpha=0.15)
        cells = []
        for i, alpha in enumerate(alphas):
            points = [value(found[(alpha, s)]["mixup"], file, path) for s in seeds if (alpha, s) in found]
            mean, std = spread(points)
            ax.scatter([alpha] * len(points), points, color="#e6550d", alpha=0.4, s=18)
            ax.errorbar(alpha, mean, yerr=std, fmt="o", color="#e6550d", ms=8, capsize=4,
                        label="mixup: mean ± std over seeds" if i == 0 else None)
            cells.append(f"{mean:.4f} ± {std:.4f} (n={len(points)})")
        ax.set_xscale("log")
        ax.set_xticks(alphas, [str(a) for a in alphas])
        ax.set_title(label, loc="left")
        ax.set_xlabel("mixup alpha")
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=9)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {base[0]:.4f} ± {base[1]:.4f} (n={len(seeds)}) |")
    fig.suptitle("Mixup's alpha against the baseline: mean ± std over seeds, each seed a dot", fontweight="bold")
    return fig, "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="a saved `dvc exp show --json` output (default: run it)")
    args = parser.parse_args()
    if args.json:
        shown = json.loads(args.json.read_text())
    else:
        result = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True)
        if result.returncode != 0:
            raise UserError(f"`dvc exp show --json` failed: {result.stderr.strip()}")
        shown = json.loads(result.stdout)
    found = experiments(shown)
    if not found:
        raise UserError("no finished experiments with metrics: run the sweep first (see `--help`)")
    fig, table = report(found)
    with atomic_output(REPORTS / "sweep.png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    with atomic_output(REPORTS / "sweep.md") as tmp:
        tmp.write_text(table)
    print(table + f"wrote {REPORTS}/sweep.png and {REPORTS}/sweep.md from {len(found)} runs")


if __name__ == "__main__":
    run(main)
