"""Stage `compare`: baseline against mixup, in one picture and one table.

Reads both variants' per-epoch metrics and evaluations; writes metrics/comparison.png (one panel
per metric, one line per variant, the peak accuracy and lowest eval loss of each marked) and
metrics/comparison.md (the headline numbers, mixup minus baseline, and which is better).
"""
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lenet_mixup import paths  # noqa: E402
from lenet_mixup.metrics import read_rows, read_tsv, summarize  # noqa: E402
from lenet_mixup.plotting import COLORS, style  # noqa: E402
from lenet_mixup.stage import UserError, atomic_output, run  # noqa: E402

CURVES = [  # (column, title, y label, which point to mark)
    ("eval_acc", "Eval accuracy", "accuracy", max),
    ("eval_loss", "Eval loss (overfitting shows as a rise)", "cross-entropy", min),
    ("train_loss", "Train loss, mean over each epoch", "loss (mixup: on mixed images)", None),
]
# Table rows: (label, how to read it from a variant's results, True if higher is better)
HEADLINE = [
    ("peak eval accuracy", lambda r: r["summary"]["peak_eval_acc"], True),
    ("final eval accuracy", lambda r: r["summary"]["final_eval_acc"], True),
    ("min eval loss", lambda r: r["summary"]["min_eval_loss"], False),
    ("final eval loss (NLL)", lambda r: r["summary"]["final_eval_loss"], False),
    ("ECE, final weights", lambda r: r["evaluation"]["final"]["ece"], False),
    ("ECE, lowest-loss weights", lambda r: r["evaluation"]["best"]["ece"], False),
    ("train accuracy, final weights", lambda r: r["evaluation"]["final"]["train_accuracy"], None),
    ("generalization gap (train - eval acc)", lambda r: r["evaluation"]["final"]["generalization_gap"], False),
]


def load(variant):
    needed = [paths.epochs_tsv(variant), paths.evaluation_json(variant), paths.fgsm_tsv(variant),
              paths.reliability_tsv(variant)]
    for path in needed:
        if not path.is_file():
            raise UserError(f"{path} is missing: run `dvc repro evaluate_{variant}` first")
    epochs = read_tsv(paths.epochs_tsv(variant))
    if not epochs:
        raise UserError(f"{paths.epochs_tsv(variant)} has no epochs; rerun `dvc repro train_{variant}`")
    return {"epochs": epochs, "summary": summarize(epochs),
            "evaluation": json.loads(paths.evaluation_json(variant).read_text()),
            "fgsm": read_rows(paths.fgsm_tsv(variant)), "reliability": read_rows(paths.reliability_tsv(variant))}


def draw(results, out):
    # 1200 x 720 px: within the plots page (`dvc plots show`) beside the other images, none cut off
    fig, axes = plt.subplots(2, 3, figsize=(12, 7.2), constrained_layout=True)
    for ax, (column, title, ylabel, mark) in zip(axes[0], CURVES, strict=True):
        for variant, r in results.items():
            rows = r["epochs"]
            ax.plot([row["epoch"] for row in rows], [row[column] for row in rows], color=COLORS[variant], lw=2,
                    label=variant)
            if mark:
                best = mark(rows, key=lambda row: row[column])
                ax.plot(best["epoch"], best[column], "o", ms=9, mfc="white", mec=COLORS[variant], mew=2)
                ax.annotate(f"{best[column]:.4f} @ {best['epoch']}", (best["epoch"], best[column]),
                            textcoords="offset points", xytext=(-30, 10 if mark is max else -16),
                            color=COLORS[variant], fontsize=9, fontweight="bold")
        ax.margins(y=0.1)  # room for the labels of the marked points
        style(ax, title, "epoch", ylabel)
    axes[0, 0].legend(frameon=False, loc="lower right")

    ax = axes[1, 0]
    for variant, r in results.items():
        for which, dash in (("final", "-"), ("best", ":")):
            ax.plot([row["epsilon_255"] for row in r["fgsm"]], [row[f"accuracy_{which}"] for row in r["fgsm"]],
                    dash, marker="o", color=COLORS[variant], lw=2, label=f"{variant}, {which} weights")
    ax.legend(frameon=False, fontsize=8)
    style(ax, "Robustness: accuracy under FGSM", "epsilon (x 1/255)", "accuracy")

    ax = axes[1, 1]
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="calibrated")
    for variant, r in results.items():
        ax.plot([row["confidence"] for row in r["reliability"]], [row["accuracy"] for row in r["reliability"]],
                marker="o", color=COLORS[variant], lw=2,
                label=f"{variant}: ECE {r['evaluation']['final']['ece']:.3f}")
    ax.legend(frameon=False, fontsize=9, loc="upper left")
    style(ax, "Calibration (final weights): reliability", "confidence", "accuracy")

    ax = axes[1, 2]
    for variant, r in results.items():
        ax.plot([row["epoch"] for row in r["epochs"]], [row["examples_per_sec"] for row in r["epochs"]],
                color=COLORS[variant], lw=2, label=f"{variant}: {r['summary']['train_seconds']:.0f} s in all")
    ax.set_ylim(bottom=0)
    ax.legend(frameon=False, fontsize=9, loc="lower right")
    style(ax, "Training throughput", "epoch", "images / second")

    b, m = results["baseline"]["summary"], results["mixup"]["summary"]
    fig.suptitle(f"LeNet on CIFAR-10, baseline vs mixup: final eval accuracy {b['final_eval_acc']:.4f} vs "
                 f"{m['final_eval_acc']:.4f}, final eval loss {b['final_eval_loss']:.3f} vs "
                 f"{m['final_eval_loss']:.3f}", fontsize=13, fontweight="bold")
    fig.savefig(out, dpi=100, format="png")
    plt.close(fig)


def table(results):
    b, m = results["baseline"], results["mixup"]
    rows = list(HEADLINE)
    for eps in b["evaluation"]["final"]["fgsm_acc"]:
        rows.append((f"FGSM accuracy at {eps}, final weights",
                     lambda r, eps=eps: r["evaluation"]["final"]["fgsm_acc"][eps], True))
    lines = ["| metric | baseline | mixup | mixup - baseline | better |", "|---|---|---|---|---|"]
    for label, value, higher_is_better in rows:
        delta = value(m) - value(b)
        better = "-" if higher_is_better is None or delta == 0 else (
            "mixup" if (delta > 0) == higher_is_better else "baseline")
        lines.append(f"| {label} | {value(b):.4f} | {value(m):.4f} | {delta:+.4f} | {better} |")
    for label, key, unit in (("epoch of peak accuracy", "peak_epoch", ""), ("epoch of min loss", "min_loss_epoch", ""),
                             ("training time", "train_seconds", " s"), ("throughput", "examples_per_sec", " img/s")):
        lines.append(f"| {label} | {b['summary'][key]:.0f}{unit} | {m['summary'][key]:.0f}{unit} | | |")
    return "\n".join(lines) + "\n"


def main():
    results = {variant: load(variant) for variant in paths.VARIANTS}
    with atomic_output(paths.COMPARISON_PNG) as tmp:
        draw(results, tmp)
    with atomic_output(paths.COMPARISON_MD) as tmp:
        tmp.write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    run(main)
