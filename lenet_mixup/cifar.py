"""CIFAR-10's official python archive, read and checked, and FastEstimator's Minmax.

The archive (cifar-10-python.tar.gz) holds cifar-10-batches-py/{data_batch_1..5, test_batch,
batches.meta}: pickles whose `data` is N x 3072 uint8 (1024 red, 1024 green, then 1024 blue
values, each a 32x32 image row-major) and whose `labels` are N ints in 0..9. Reshaping a row to
(3, 32, 32) therefore gives the NCHW layout PyTorch uses, with no transpose.

Pickles can run code when loaded, so the batches are read by `BatchUnpickler`, which builds only
what the official format holds: dicts, lists, bytes and str, numbers, and uint8 numpy arrays.
"""
import codecs
import pickle
import tarfile
import zlib

import numpy as np
from numpy._core.multiarray import _reconstruct
from numpy._core.numeric import _frombuffer

from lenet_mixup.stage import UserError

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_MEMBER = "test_batch"  # the archive member holding the eval (test) images
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
            eval_x, eval_y = _batch(tar, members, TEST_MEMBER, path)
    except (tarfile.TarError, EOFError, OSError, zlib.error, pickle.UnpicklingError) as e:
        raise UserError(f"{path} is not a readable .tar.gz ({e}); it is truncated or corrupt: "
                        "delete it and run `dvc repro download` again, or point data.url at a good copy") from None
    names = meta.get(b"label_names", meta.get("label_names"))
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise UserError(f"{path}: batches.meta must list {NUM_CLASSES} label_names, found {names!r}")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    train_x = np.concatenate([x for x, _ in train])
    train_y = np.concatenate([y for _, y in train])
    return train_x, train_y, eval_x, eval_y, classes


class Forbidden(pickle.UnpicklingError):
    """A pickle names something CIFAR-10's format never holds."""


def _uint8_dtype(name, *args):
    """numpy.dtype, for the one element type the format holds."""
    if name not in ("u1", b"u1", "|u1", "uint8"):
        raise Forbidden(f"an array of dtype {name!r}, not uint8")
    return np.dtype("u1")


def _latin1_encode(text, encoding="latin1"):
    """_codecs.encode as Python 3 pickles bytes at protocol 2, and nothing else."""
    if encoding != "latin1":
        raise Forbidden(f"a {encoding!r} encoding")
    return codecs.encode(text, "latin1")


class BatchUnpickler(pickle.Unpickler):
    """An unpickler that admits only what CIFAR-10's batches hold; anything else is an error.

    Beyond built-in containers, strings and numbers, the official files (Python 2 pickles) name
    numpy's array reconstruction, ndarray and dtype; pickles written by Python 3 name numpy._core
    (numpy 2), _frombuffer (protocol 5) or _codecs.encode (bytes at protocol 2). dtype admits uint8
    only. No other class or function can be named, so loading a batch never runs foreign code.
    """
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _uint8_dtype,
        ("_codecs", "encode"): _latin1_encode,
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise Forbidden(f"{module}.{name}")
        return self.ALLOWED[module, name]


def _load(tar, members, name, path):
    member = members.get(f"{FOLDER}/{name}")
    if member is None:
        raise UserError(f"{path} has no {FOLDER}/{name}: it is not CIFAR-10's python archive "
                        "(cifar-10-python.tar.gz); check data.url")
    try:
        return BatchUnpickler(tar.extractfile(member), encoding="bytes").load()
    except Forbidden as e:
        raise UserError(f"{path}: {FOLDER}/{name} holds {e}, which CIFAR-10's format never does; refusing "
                        "to load it (the archive is not the official one, or was tampered with)") from None


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
