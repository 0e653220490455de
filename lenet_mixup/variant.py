"""The registry of variants: each is a batch transform in lenet_mixup/variants/<name>.py.

params.yaml lists the variants the pipeline trains (`variants`) and holds a section of params for
each, named after it. A variant's module defines:

    PARAMS                        its section's schema, {key: check} (the checks of lenet_mixup.params)
    mixing_from(params)           the first epoch (counted from 0) that mixes, or None if none ever does
    draws(params, steps, device)  one epoch's random numbers, a float32 row per step, on `device`, drawn
                                  from that device's default generator (seeded by train.seed)
    NO_MIX                        the row of draws with which `mix` leaves a batch as it is
    mix(x, draw)                  (the batch transformed, the weight of each image's own label: a 0-d
                                  tensor); the rest of the weight goes to the label of the image mixed
                                  into it, its predecessor in the batch (the first image's is the last)

`mix` must be tensor operations only, with no host sync: the CPU step calls it, and the CUDA path
captures it in a graph (lenet_mixup.steps), so both train the variant through the same function.
This module imports no torch: params.yaml is checked by stages that never load it.
"""
import importlib
import re
from pathlib import Path

from lenet_mixup.stage import UserError

FOLDER = Path(__file__).parent / "variants"
INTERFACE = ("PARAMS", "mixing_from", "draws", "NO_MIX", "mix")
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
