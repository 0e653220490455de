"""The per-epoch metrics file (TSV, one row per epoch) and the summary drawn from it.

One place for the format: the training stages write it, `compare` and the tests read it, and
DVC plots it (dvc.yaml `plots:`).
"""
import csv
import json
import math

# train_steps and eval_images: what train.steps_per_epoch and train.validation_steps left of each epoch
COLUMNS = ["epoch", "step", "train_loss", "eval_loss", "eval_acc", "lr", "examples_per_sec", "seconds",
           "train_steps", "eval_images"]
INTEGERS = ("epoch", "step", "train_steps", "eval_images")


def write_tsv(rows, path):
    """The per-epoch file: COLUMNS, in that order."""
    write_rows([{k: row[k] for k in COLUMNS} for row in rows], path)


def write_rows(rows, path, delimiter="\t"):
    """Any table DVC plots: a header from the first row's keys, numbers to 6 significant digits."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]), delimiter=delimiter, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _fmt(v) for k, v in row.items()} for row in rows)


def read_tsv(path):
    """The per-epoch file as rows of numbers (epoch and step as ints)."""
    return [{k: int(v) if k in INTEGERS else v for k, v in row.items()} for row in read_rows(path)]


def read_rows(path, delimiter="\t"):
    """A table written by write_rows, every value as a float."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f, delimiter=delimiter)]


def _fmt(value):
    return f"{value:.6g}" if isinstance(value, float) else value


def summarize(rows):
    """Headline numbers of one run (what FastEstimator's log reports), from its per-epoch rows."""
    peak = max(rows, key=lambda r: r["eval_acc"])  # first epoch reaching the peak
    low = min(rows, key=lambda r: r["eval_loss"])
    seconds = sum(r["seconds"] for r in rows)
    images = sum(r["examples_per_sec"] * r["seconds"] for r in rows)
    return {
        "peak_eval_acc": peak["eval_acc"], "peak_epoch": peak["epoch"],
        "final_eval_acc": rows[-1]["eval_acc"],
        "min_eval_loss": low["eval_loss"], "min_loss_epoch": low["epoch"],
        "final_eval_loss": rows[-1]["eval_loss"],
        "train_seconds": round(seconds, 2),
        "examples_per_sec": round(images / seconds, 1) if seconds > 0 else math.nan,
    }


def write_summary(summary, path):
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
