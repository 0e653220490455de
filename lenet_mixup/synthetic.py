"""Tiny archives in CIFAR-10's official layout, for the tests and the benchmarks; never a stand-in for the data.

Each image's class shows in its colour, so that a few training steps learn something measurable.
"""
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from lenet_mixup.cifar import FOLDER, TEST_MEMBER, TRAIN_BATCHES

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def synthetic_split(n, seed):
    """n images (N x 3072 uint8, official row layout) whose class shows in their colour, and labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 256, size=(n, 3, 32, 32)).astype(np.float32) * 0.5
    images[np.arange(n), labels % 3] += 12.0 * labels[:, None, None]  # a learnable signal
    return np.clip(images, 0, 255).astype(np.uint8).reshape(n, 3072), labels.tolist()


def write_archive(path, train=None, eval=None, *, skip=(), meta=None, overrides=None):
    """Write a .tar.gz in CIFAR-10's python layout and return its md5; `train` and `eval` are (images, labels)
    (default: 250 and 100 synthetic ones); `skip` drops members, `overrides` replaces batches (broken archives)."""
    train = train or synthetic_split(250, 0)
    eval = eval or synthetic_split(100, 1)
    batches = {"batches.meta": meta or {"label_names": CLASSES, "num_cases_per_batch": len(train[1]) // 5}}
    for name, chunk in zip(TRAIN_BATCHES, np.array_split(np.arange(len(train[1])), len(TRAIN_BATCHES)), strict=True):
        batches[name] = {b"data": train[0][chunk], b"labels": [train[1][j] for j in chunk]}
    batches[TEST_MEMBER] = {b"data": eval[0], b"labels": list(eval[1])}
    batches.update(overrides or {})
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in batches.items():
            if name in skip:
                continue
            data = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"{FOLDER}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.md5(Path(path).read_bytes()).hexdigest()
