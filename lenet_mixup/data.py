"""The prepared arrays (stage `prepare`) as tensors resident in memory, on the device that trains."""
import numpy as np
import torch

from lenet_mixup import paths
from lenet_mixup.model import INPUT_SHAPE, NUM_CLASSES
from lenet_mixup.stage import UserError


def load_split(split, device):
    """(images, labels) of `train` or `eval`: float32 channels_last images, int64 labels, on `device`.

    channels_last is the faster conv layout on the CPU and on GPUs. The images are read lazily
    (copy-on-write map) and copied once, into the layout and onto the device.
    """
    for name in (f"{split}_x", f"{split}_y"):
        if not paths.prepared_file(name).is_file():
            raise UserError(f"{paths.prepared_file(name)} is missing: run `dvc repro prepare`")
    x = np.load(paths.prepared_file(f"{split}_x"), mmap_mode="c")
    y = np.load(paths.prepared_file(f"{split}_y"))
    if x.ndim != 4 or x.shape[1:] != INPUT_SHAPE or x.dtype != np.float32:
        raise UserError(f"{paths.prepared_file(f'{split}_x')}: expected float32 (N, 3, 32, 32), found "
                        f"{x.dtype} {x.shape}; rerun `dvc repro prepare`")
    if y.shape != (len(x),) or y.dtype != np.int64 or (y.size and not 0 <= y.min() <= y.max() < NUM_CLASSES):
        raise UserError(f"{paths.prepared_file(f'{split}_y')}: expected {len(x)} int64 labels in 0..9 to match "
                        f"{len(x)} images, found {y.dtype} {y.shape}; rerun `dvc repro prepare`")
    x = torch.from_numpy(x).to(device).contiguous(memory_format=torch.channels_last)
    return x, torch.from_numpy(y).to(device)
