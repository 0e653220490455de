"""Stage `compare`: every variant against the baseline, in one picture, one table and the charts' data.

Reads the per-epoch metrics and evaluations of each variant params.yaml lists (`variants`), from
metrics/<variant>/; writes results/comparison.png (one panel per metric, one line per variant in its
colour, the peak accuracy and lowest eval loss of each marked), results/comparison.md (the headline
numbers, each variant minus the baseline, and which is best), and every variant's rows of epochs.tsv,
fgsm.tsv and reliability.tsv in one table each under results/, with the variant's name and colour:
the data of the `dvc plots` charts (dvc.yaml), so that they draw any number of variants.
"""
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lenet_mixup import paths  # noqa: E402
from lenet_mixup.metrics import read_rows, read_tsv, summarize, write_rows  # noqa: E402
from lenet_mixup.params import load_params  # noqa: E402
from lenet_mixup.plotting import colors, style  # noqa: E402
from lenet_mixup.stage import UserError, atomic_output, run  # noqa: E402
from lenet_mixup.variant import REFERENCE  # noqa: E402

CURVES = [  # (column, title, y label, which point to mark)
    ("eval_acc", "Eval accuracy", "accuracy", max),
    ("eval_loss", "Eval loss (overfitting shows as a rise)", "cross-entropy", min),
    ("train_loss", "Train loss, mean over each epoch", "loss (on the batches as trained)", None),
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
            raise UserError(f"{path} is missing: run `dvc repro evaluate@{variant}` first")
    epochs = read_tsv(paths.epochs_tsv(variant))
    if not epochs:
        raise UserError(f"{paths.epochs_tsv(variant)} has no epochs; rerun `dvc repro train@{variant}`")
    return {"epochs": epochs, "summary": summarize(epochs),
            "evaluation": json.loads(paths.evaluation_json(variant).read_text()),
            "fgsm": read_rows(paths.fgsm_tsv(variant)), "reliability": read_rows(paths.reliability_tsv(variant))}


def draw(results, out):
    color = colors(results)
    # 1200 x 720 px: within the plots page (`dvc plots show`) beside the other images, none cut off
    fig, axes = plt.subplots(2, 3, figsize=(12, 7.2), constrained_layout=True)
    for ax, (column, title, ylabel, mark) in zip(axes[0], CURVES, strict=True):
        for variant, r in results.items():
            rows = r["epochs"]
            label = variant
            if mark:  # the marked point, a ring on the line, its value in the legend: no label over a curve
                best = mark(rows, key=lambda row: row[column])
                ax.plot(best["epoch"], best[column], "o", ms=9, mfc="white", mec=color[variant], mew=2, zorder=3)
                label = f"{variant}: {best[column]:.4f} @ {best['epoch']}"
            ax.plot([row["epoch"] for row in rows], [row[column] for row in rows], color=color[variant], lw=2,
                    label=label)
        ax.legend(frameon=False, fontsize=9, title="peak" if mark is max else "lowest" if mark else None,
                  title_fontsize=9)
        style(ax, title, "epoch", ylabel)

    ax = axes[1, 0]
    for variant, r in results.items():
        for which, dash in (("final", "-"), ("best", ":")):
            ax.plot([row["epsilon_255"] for row in r["fgsm"]], [row[f"accuracy_{which}"] for row in r["fgsm"]],
                    dash, marker="o", color=color[variant], lw=2, label=f"{variant}, {which} weights")
    ax.legend(frameon=False, fontsize=8)
    style(ax, "Robustness: accuracy under FGSM", "epsilon (x 1/255)", "accuracy")

    ax = axes[1, 1]
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="calibrated")
    for variant, r in results.items():
        ax.plot([row["confidence"] for row in r["reliability"]], [row["accuracy"] for row in r["reliability"]],
                marker="o", color=color[variant], lw=2,
                label=f"{variant}: ECE {r['evaluation']['final']['ece']:.3f}")
    ax.legend(frameon=False, fontsize=9, loc="upper left")
    style(ax, "Calibration (final weights): reliability", "confidence", "accuracy")

    # Over-fitting, not speed: each variant's stage ran at whatever load the machine had then, so speeds
    # compare only side by side, in one run of the benchmark (python -m bench.train_speed).
    ax = axes[1, 2]
    for i, (variant, r) in enumerate(results.items()):
        final = r["evaluation"]["final"]
        ax.bar(i - 0.2, final["train_accuracy"], 0.4, color=color[variant], alpha=0.45)
        ax.bar(i + 0.2, final["accuracy"], 0.4, color=color[variant])
        ax.annotate(f"gap {final['generalization_gap']:.3f}", (i, final["train_accuracy"]), ha="center",
                    va="bottom", fontsize=9, xytext=(0, 3), textcoords="offset points")
    ax.set_xticks(range(len(results)), list(results))
    ax.set_ylim(0, 1.15)
    keys = [plt.Rectangle((0, 0), 1, 1, color="grey", alpha=0.45), plt.Rectangle((0, 0), 1, 1, color="grey")]
    ax.legend(handles=keys, labels=["train", "eval"], frameon=False, fontsize=9, loc="upper right", ncol=2)
    style(ax, "Over-fitting: train vs eval accuracy", "final weights", "accuracy")

    finals = ", ".join(f"{v} {r['summary']['final_eval_acc']:.4f}" for v, r in results.items())
    fig.suptitle(f"LeNet on CIFAR-10, {' vs '.join(results)}\nfinal eval accuracy: {finals}",
                 fontsize=13, fontweight="bold")
    fig.savefig(out, dpi=100, format="png")
    plt.close(fig)


def table(results):
    """The headline numbers of every variant, each other variant minus the baseline, and the best."""
    others = [v for v in results if v != REFERENCE]
    rows = list(HEADLINE)
    for eps in results[REFERENCE]["evaluation"]["final"]["fgsm_acc"]:
        rows.append((f"FGSM accuracy at {eps}, final weights",
                     lambda r, eps=eps: r["evaluation"]["final"]["fgsm_acc"][eps], True))
    header = ["metric", *results, *(f"{v} - {REFERENCE}" for v in others), "best"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, value, higher_is_better in rows:
        values = {v: value(r) for v, r in results.items()}
        deltas = [f"{values[v] - values[REFERENCE]:+.4f}" for v in others]
        pick = max if higher_is_better else min
        top = pick(values, key=values.get) if higher_is_better is not None else None
        best = "-" if top is None or list(values.values()).count(values[top]) > 1 else top
        lines.append("| " + " | ".join([label, *(f"{x:.4f}" for x in values.values()), *deltas, best]) + " |")
    blank = [""] * (len(others) + 1)
    # No training time or throughput: each variant's ran at another time, under another load (see draw).
    for label, key in (("epoch of peak accuracy", "peak_epoch"), ("epoch of min loss", "min_loss_epoch")):
        cells = [f"{r['summary'][key]:.0f}" for r in results.values()]
        lines.append("| " + " | ".join([label, *cells, *blank]) + " |")
    return "\n".join(lines) + "\n"


def chart_rows(results, part):
    """Every variant's rows of one metrics table, each with the variant's name and colour."""
    color = colors(results)
    return [{"variant": v, "color": color[v], **row} for v, r in results.items() for row in r[part]]


def main():
    variants = load_params("variants")["variants"]
    results = {variant: load(variant) for variant in variants}
    with atomic_output(paths.COMPARISON_PNG) as tmp:
        draw(results, tmp)
    with atomic_output(paths.COMPARISON_MD) as tmp:
        tmp.write_text(table(results))
    for path, part in ((paths.CURVES_TSV, "epochs"), (paths.FGSM_TSV, "fgsm"), (paths.RELIABILITY_TSV, "reliability")):
        with atomic_output(path) as tmp:
            write_rows(chart_rows(results, part), tmp)
    print(table(results))


if __name__ == "__main__":
    run(main)
