"""Stage `compare`: draw baseline against mixup from their per-epoch metrics.

Writes metrics/comparison.png (one panel per metric, one line per variant, the peak accuracy and
the lowest eval loss of each variant marked) and metrics/comparison.md (the headline numbers).
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from stages import paths  # noqa: E402
from stages.metrics import read_tsv, summarize  # noqa: E402
from stages.stage import UserError, atomic_output, run  # noqa: E402

COLORS = {"baseline": "#1f77b4", "mixup": "#e6550d"}
PANELS = [  # (column, title, y label, which point to mark)
    ("eval_acc", "Eval accuracy", "accuracy", max),
    ("eval_loss", "Eval loss (overfitting shows as a rise)", "cross-entropy", min),
    ("train_loss", "Train loss, mean over each epoch", "loss (mixup: on mixed images)", None),
    ("examples_per_sec", "Training throughput", "images / second", None),
]


def load_runs():
    runs = {}
    for variant in paths.VARIANTS:
        path = paths.epochs_tsv(variant)
        if not path.is_file():
            raise UserError(f"{path} is missing: run `dvc repro train_{variant}` first")
        runs[variant] = read_tsv(path)
        if not runs[variant]:
            raise UserError(f"{path} has no epochs; rerun `dvc repro train_{variant}`")
    return runs


def draw(runs, summaries, out):
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True, constrained_layout=True)
    for ax, (column, title, ylabel, mark) in zip(axes.flat, PANELS, strict=False):
        for variant, rows in runs.items():
            epochs = [r["epoch"] for r in rows]
            values = [r[column] for r in rows]
            ax.plot(epochs, values, color=COLORS[variant], lw=2, label=variant)
            if mark:
                best = mark(rows, key=lambda r: r[column])
                ax.plot(best["epoch"], best[column], "o", ms=9, mfc="white", mec=COLORS[variant], mew=2)
                ax.annotate(f"{best[column]:.4f} @ {best['epoch']}", (best["epoch"], best[column]),
                            textcoords="offset points", xytext=(6, 8 if mark is max else -14),
                            color=COLORS[variant], fontsize=9, fontweight="bold")
        ax.set_title(title, fontsize=11, loc="left")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    axes[0, 0].legend(frameon=False, loc="lower right")
    b, m = summaries["baseline"], summaries["mixup"]
    fig.suptitle(f"LeNet on CIFAR-10, baseline vs mixup: final eval accuracy {b['final_eval_acc']:.4f} vs "
                 f"{m['final_eval_acc']:.4f}, final eval loss {b['final_eval_loss']:.3f} vs "
                 f"{m['final_eval_loss']:.3f}", fontsize=12, fontweight="bold")
    fig.savefig(out, dpi=110, format="png")
    plt.close(fig)


def table(summaries):
    rows = [("peak eval accuracy (epoch)", lambda s: f"{s['peak_eval_acc']:.4f} ({s['peak_epoch']})"),
            ("final eval accuracy", lambda s: f"{s['final_eval_acc']:.4f}"),
            ("min eval loss (epoch)", lambda s: f"{s['min_eval_loss']:.4f} ({s['min_loss_epoch']})"),
            ("final eval loss", lambda s: f"{s['final_eval_loss']:.4f}"),
            ("training time", lambda s: f"{s['train_seconds']:.0f} s"),
            ("throughput", lambda s: f"{s['examples_per_sec']:.0f} img/s")]
    lines = ["| | " + " | ".join(summaries) + " |", "|---|" + "---|" * len(summaries)]
    lines += [f"| {name} | " + " | ".join(fmt(s) for s in summaries.values()) + " |" for name, fmt in rows]
    return "\n".join(lines) + "\n"


def main():
    runs = load_runs()
    summaries = {variant: summarize(rows) for variant, rows in runs.items()}
    with atomic_output(paths.COMPARISON_PNG) as tmp:
        draw(runs, summaries, tmp)
    with atomic_output(paths.COMPARISON_MD) as tmp:
        tmp.write_text(table(summaries))
    print(table(summaries))


if __name__ == "__main__":
    run(main)
