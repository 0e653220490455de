"""Stage `prepare`: read the archive, apply Minmax, cache the arrays training loads.

Writes data/prepared/{train_x, train_y, eval_x, eval_y}.npy and classes.json:
images float32 NCHW (N, 3, 32, 32) in [0, 1] after Minmax per image, labels int64 in 0..9.
.npy files load in a fraction of a second and can be memory-mapped (np.load(mmap_mode="r")).
"""
import json

import numpy as np

from lenet_mixup.cifar import minmax, read_archive
from lenet_mixup.paths import PREPARED, RAW_ARCHIVE
from lenet_mixup.stage import UserError, atomic_output, run

OFFICIAL_COUNTS = (50_000, 10_000)


def main():
    if not RAW_ARCHIVE.is_file():
        raise UserError(f"{RAW_ARCHIVE} is missing: run `dvc repro download` first")
    train_x, train_y, eval_x, eval_y, classes = read_archive(RAW_ARCHIVE)
    if len(train_x) == 0 or len(eval_x) == 0:
        raise UserError(f"{RAW_ARCHIVE} holds {len(train_x)} train and {len(eval_x)} eval images; both must be > 0")
    counts = (len(train_x), len(eval_x))
    note = "the official counts" if counts == OFFICIAL_COUNTS else "a subset: the official archive has 50000 + 10000"
    print(f"read {counts[0]} train + {counts[1]} eval images ({note})")
    with atomic_output(PREPARED) as tmp:
        tmp.mkdir()
        for name, array in [("train_x", minmax(train_x)), ("train_y", train_y),
                            ("eval_x", minmax(eval_x)), ("eval_y", eval_y)]:
            np.save(tmp / f"{name}.npy", array)
        (tmp / "classes.json").write_text(json.dumps(classes, indent=2) + "\n")
    print(f"wrote {PREPARED}/: train_x {train_x.shape} float32, eval_x {eval_x.shape} float32, int64 labels")


if __name__ == "__main__":
    run(main)
