"""The params schema: the one place that reads params.yaml and says what every key may hold.

Every stage calls load_params() before doing any work, so a typo or a bad value fails at once
with one line that names the key, the value and what is allowed, and nothing is written.
params.yaml is read as DVC reads it (ruamel.yaml's safe loader, YAML 1.2), so a value means the
same to the stages as to `dvc params diff` and `dvc exp show`: `1e-4` and `.5` are numbers.
"""
import io
import math

from ruamel.yaml import YAML, YAMLError

from lenet_mixup.paths import PARAMS
from lenet_mixup.stage import UserError

PRECISIONS = ("fp32", "bf16")  # train.precision: float32 throughout, or bf16 autocast (lenet_mixup.steps)


def _int(lo=None):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int):
            return "an integer" + (f" >= {lo}" if lo is not None else "")
        if lo is not None and v < lo:
            return f"an integer >= {lo}"
    return check


def _positive_float(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        return "a number > 0"


def _optional_int(v):
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        return "null (all) or an integer >= 1"


def _precision(v):
    if v not in PRECISIONS:
        return f"one of {', '.join(PRECISIONS)}"


def _text(v):
    if not isinstance(v, str) or not v:
        return "a non-empty string"


def _md5(v):
    if v is not None and not (isinstance(v, str) and len(v) == 32 and all(c in "0123456789abcdef" for c in v)):
        return "null or 32 lowercase hex digits"


def _epsilons(v):
    def in_range(e):
        return not isinstance(e, bool) and isinstance(e, (int, float)) and 0 <= e <= 255
    if not isinstance(v, list) or not v or not all(in_range(e) for e in v):
        return "a non-empty list of numbers in [0, 255] (units of 1/255 on the [0, 1] Minmax scale)"


def _device(v):
    if v not in ("auto", "cpu", "cuda"):
        return "one of auto, cpu, cuda"
    if v == "cuda":
        import torch
        if not torch.cuda.is_available():
            return "auto or cpu: no CUDA device is available on this machine"


SCHEMA = {
    "data": {"url": _text, "md5": _md5},
    "train": {"epochs": _int(1), "batch_size": _int(1), "lr": _positive_float, "seed": _int(0), "device": _device,
              "precision": _precision, "steps_per_epoch": _optional_int, "validation_steps": _optional_int,
              "shards": _int(1)},
    "mixup": {"alpha": _positive_float, "warmup": _int(0)},
    "evaluate": {"fgsm_eps_255": _epsilons, "ece_bins": _int(1)},
}


def validate(params):
    """Return params unchanged, or raise UserError naming the first bad key."""
    if not isinstance(params, dict):
        raise UserError(f"{PARAMS}: expected sections {', '.join(s for s in SCHEMA)}; fix the file's layout")
    for section, values in params.items():
        if section not in SCHEMA:
            raise UserError(f"{PARAMS}: unknown section '{section}'; allowed: {', '.join(SCHEMA)}")
        keys = SCHEMA[section]
        if not isinstance(values, dict):
            raise UserError(f"{PARAMS}: '{section}' must be a mapping of {', '.join(keys)}")
        for key, value in values.items():
            if key not in keys:
                raise UserError(f"{PARAMS}: unknown key '{section}.{key}'; allowed in '{section}': {', '.join(keys)}")
            problem = keys[key](value)
            if problem:
                raise UserError(f"{PARAMS}: {section}.{key} = {value!r} is not allowed; it must be {problem}")
        missing = [k for k in keys if k not in values]
        if missing:
            raise UserError(f"{PARAMS}: '{section}' lacks {', '.join(missing)}")
    return params


def read_yaml(text):
    """YAML as DVC parses params files: YAML 1.2, plain Python dicts, lists and scalars."""
    return YAML(typ="safe").load(text)


def dump_yaml(data):
    """A whole params file as text that read_yaml (and DVC) reads back as `data`, keys in their order."""
    out = io.StringIO()
    writer = YAML(typ="safe")
    writer.default_flow_style = False
    writer.sort_base_mapping_type_on_output = False
    writer.dump(data, out)
    return out.getvalue()


def load_params(*sections, path=PARAMS):
    """Read and validate params.yaml; return the requested sections (all when none are named)."""
    try:
        params = read_yaml(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: run the stage from the project root (dvc repro does)") from None
    except YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    validate(params)
    for section in sections:
        if section not in params:
            raise UserError(f"{path}: section '{section}' is missing")
    return params if not sections else {s: params[s] for s in sections}
