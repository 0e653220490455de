"""CIFAR-10's official python archive, read and checked, and FastEstimator's Minmax.

The archive (cifar-10-python.tar.gz) holds cifar-10-batches-py/{data_batch_1..5, test_batch,
batches.meta}: pickles whose `data` is N x 3072 uint8 (1024 red, 1024 green, then 1024 blue
values, each a 32x32 image row-major) and whose `labels` are N ints in 0..9. Reshaping a row to
(3, 32, 32) therefore gives the NCHW layout PyTorch uses, with no transpose.
"""
import pickle
import tarfile
import zlib

import numpy as np

from stages.stage import UserError

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
EVAL_BATCH = "test_batch"
IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10


def minmax(images):
    """FastEstimator's Minmax, per image over all pixels and channels: float32 in [0, 1].

    (x - min) / max(max - min, 1e-7), so a constant image becomes all zeros, not NaN.
    """
    x = images.astype(np.float32)
    axes = tuple(range(1, x.ndim))
    lo = x.min(axis=axes, keepdims=True)
    hi = x.max(axis=axes, keepdims=True)
    x -= lo
    x /= np.maximum(hi - lo, np.float32(1e-7))
    return x


def read_archive(path):
    """Return (train_x, train_y, eval_x, eval_y, class_names); images uint8 NCHW, labels int64."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            meta = _load(tar, members, "batches.meta", path)
            train = [_batch(tar, members, name, path) for name in TRAIN_BATCHES]
            eval_x, eval_y = _batch(tar, members, EVAL_BATCH, path)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise UserError(f"{path} is not a readable .tar.gz ({e}); it is truncated or corrupt: "
                        "delete it and run `dvc repro download` again, or point data.url at a good copy") from None
    names = meta.get(b"label_names", meta.get("label_names"))
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise UserError(f"{path}: batches.meta must list {NUM_CLASSES} label_names, found {names!r}")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    train_x = np.concatenate([x for x, _ in train])
    train_y = np.concatenate([y for _, y in train])
    return train_x, train_y, eval_x, eval_y, classes


def _load(tar, members, name, path):
    member = members.get(f"{FOLDER}/{name}")
    if member is None:
        raise UserError(f"{path} has no {FOLDER}/{name}: it is not CIFAR-10's python archive "
                        "(cifar-10-python.tar.gz); check data.url")
    # The official format is a pickle; only open archives whose md5 you trust (data.md5).
    return pickle.load(tar.extractfile(member), encoding="bytes")


def _batch(tar, members, name, path):
    batch = _load(tar, members, name, path)
    data, labels = batch.get(b"data"), batch.get(b"labels")
    where = f"{path}: {FOLDER}/{name}"
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"{where}: 'data' must be uint8 N x 3072, found {got}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(data),):
        raise UserError(f"{where}: {len(data)} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise UserError(f"{where}: labels must lie in 0..{NUM_CLASSES - 1}, found {labels.min()}..{labels.max()}")
    return data.reshape(-1, *IMAGE_SHAPE), labels
