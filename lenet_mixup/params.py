"""The params schema: the one place that reads params.yaml and says what every key may hold.

Every stage calls load_params() before doing any work, so a typo or a bad value fails at once
with one line that names the key, the value and what is allowed, and nothing is written.
params.yaml is read as DVC reads it (ruamel.yaml's safe loader, YAML 1.2), so a value means the
same to the stages as to `dvc params diff` and `dvc exp show`: `1e-4` and `.5` are numbers.

A variant's section is checked against the schema its module declares (lenet_mixup/variant.py) by the
stages that read it; every stage checks that each section is known and each listed variant has one.
"""
import io
import math

from ruamel.yaml import YAML, YAMLError

from lenet_mixup import variant
from lenet_mixup.paths import PARAMS
from lenet_mixup.stage import UserError

PRECISIONS = ("fp32", "bf16")  # train.precision: float32 throughout, or bf16 autocast (lenet_mixup.steps)


def integer(at_least=None):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int):
            return "an integer" + (f" >= {at_least}" if at_least is not None else "")
        if at_least is not None and v < at_least:
            return f"an integer >= {at_least}"
    return check


def positive_number(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        return "a number > 0"


def probability(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
        return "a number in [0, 1]"


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
    "train": {"epochs": integer(1), "batch_size": integer(1), "lr": positive_number, "seed": integer(0),
              "device": _device, "precision": _precision, "steps_per_epoch": _optional_int,
              "validation_steps": _optional_int, "shards": integer(1)},
    "evaluate": {"fgsm_eps_255": _epsilons, "ece_bins": integer(1)},
}
VARIANTS = "variants"  # the list of the variants the pipeline trains; each has a section of its own


def validate(params, variant_sections=()):
    """Return params unchanged, or raise UserError naming the first bad key. The sections of the variants in
    `variant_sections` are checked against their modules' schemas; every other variant's, only for its form."""
    if not isinstance(params, dict):
        raise UserError(f"{PARAMS}: expected sections {', '.join([VARIANTS, *SCHEMA])}; fix the file's layout")
    if VARIANTS in params:
        _check_variant_list(params)
    for section, values in params.items():
        if section == VARIANTS:
            continue
        if section not in SCHEMA and section not in variant.available():
            raise UserError(f"{PARAMS}: unknown section '{section}'; allowed: {', '.join([VARIANTS, *SCHEMA])} and "
                            f"one per variant ({', '.join(variant.available())})")
        if not isinstance(values, dict):
            empty = " (`{}` when empty)" if values is None else ""
            raise UserError(f"{PARAMS}: '{section}' must be a mapping{empty}")
        if section in SCHEMA or section in variant_sections:
            _check_section(section, values, SCHEMA.get(section) or variant.load(section).PARAMS)
    return params


def _check_variant_list(params):
    names = params[VARIANTS]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise UserError(f"{PARAMS}: {VARIANTS} = {names!r} is not allowed; it must be a list of variant names")
    for name in names:
        if name not in variant.available():
            raise UserError(f"{PARAMS}: {VARIANTS} lists '{name}', which has no module ({variant.source(name)}); "
                            f"the variants: {', '.join(variant.available())}")
        if name not in params:
            raise UserError(f"{PARAMS}: {VARIANTS} lists '{name}' but there is no '{name}' section; add one "
                            f"with the params {variant.source(name)} declares (`{name}: {{}}` if none)")
    if len(set(names)) != len(names):
        raise UserError(f"{PARAMS}: {VARIANTS} lists a variant twice: {names}")
    if variant.REFERENCE not in names:
        raise UserError(f"{PARAMS}: {VARIANTS} must list '{variant.REFERENCE}', the reference of every comparison")


def _check_section(section, values, keys):
    for key, value in values.items():
        if key not in keys:
            allowed = ", ".join(keys) or "nothing (`{}`)"
            raise UserError(f"{PARAMS}: unknown key '{section}.{key}'; allowed in '{section}': {allowed}")
        problem = keys[key](value)
        if problem:
            raise UserError(f"{PARAMS}: {section}.{key} = {value!r} is not allowed; it must be {problem}")
    missing = [k for k in keys if k not in values]
    if missing:
        raise UserError(f"{PARAMS}: '{section}' lacks {', '.join(missing)}")


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
    """Read and validate params.yaml; return the requested sections (all when none are named). A requested
    section that is a variant's is checked against that variant's schema."""
    try:
        params = read_yaml(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: run the stage from the project root (dvc repro does)") from None
    except YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    validate(params, [s for s in sections if s not in SCHEMA and s != VARIANTS])
    for section in sections:
        if section not in params:
            raise UserError(f"{path}: section '{section}' is missing")
    return params if not sections else {s: params[s] for s in sections}
