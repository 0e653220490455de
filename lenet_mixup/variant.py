"""The registry of variants: each is a batch augmentation in lenet_mixup/variants/<name>.py.

params.yaml lists the variants the pipeline trains (`variants`) and holds a section of params for
each, named after it. A variant's module defines:

    PARAMS                       its section's schema, {key: check} (the checks of lenet_mixup.params)
    ACTION                       what it does to a batch, in its own words, for logs, summaries and pictures
                                 ("mixed", "cropped and flipped"); the summary counts `<ACTION>_epochs`
    first_epoch(params)          the first epoch (counted from 0) it transforms, or None if it never does
    draw(params, shape, device)  the random numbers for one batch of `shape` (N, C, H, W): any tensor, one
                                 number per batch or per image, from `device`'s default generator
    transform(x, draw, params)   (the batch transformed, the weight of each image's own label): the weight is a
                                 0-d tensor (one for the batch), an (N,) tensor (one per image), or None (every
                                 image keeps its own label). The rest of a weight goes to the label of the image
                                 mixed in, its predecessor in the batch (the first image's is the last).

Both are tensor operations only, with no host sync: the CPU step calls them for every batch, and the CUDA
graph captures them (lenet_mixup.steps), so numbers drawn per image are drawn on the GPU at every replay.
A transform receives the batch as the loop holds it (float images in [0, 1], channels_last); the loop
puts the batch back in channels_last whatever layout `transform` returns.
This module imports no torch: params.yaml is checked by stages that never load it.
"""
import importlib
import re
from pathlib import Path

from lenet_mixup.stage import UserError

FOLDER = Path(__file__).parent / "variants"
INTERFACE = ("PARAMS", "ACTION", "first_epoch", "draw", "transform")
REFERENCE = "baseline"  # the variant every other one is compared with


def available():
    """The variants that have a module, by name."""
    return sorted(p.stem for p in FOLDER.glob("*.py") if p.stem != "__init__")


def source(name):
    """A variant's module file, relative to the project root (as dvc.yaml names it)."""
    return Path("lenet_mixup/variants") / f"{name}.py"


def load(name):
    """The module of variant `name`, checked to define the interface."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", str(name)) or name not in available():
        raise UserError(f"no variant {name!r}: there is no {source(name)}; the variants: {', '.join(available())}")
    module = importlib.import_module(f"lenet_mixup.variants.{name}")
    missing = [attribute for attribute in INTERFACE if not hasattr(module, attribute)]
    if missing:
        raise UserError(f"{source(name)} lacks {', '.join(missing)}: a variant defines {', '.join(INTERFACE)} "
                        "(lenet_mixup/variant.py says what each is)")
    return module


def augmenter(module, params):
    """x -> (x transformed, label weight): one batch drawn for and transformed, as the CPU step does it."""
    return lambda x: module.transform(x, module.draw(params, x.shape, x.device), params)


def epochs_key(module):
    """The summary's count of the epochs a variant transformed, in its own words (`mixed_epochs`)."""
    return re.sub(r"\W+", "_", module.ACTION.strip().lower()) + "_epochs"
