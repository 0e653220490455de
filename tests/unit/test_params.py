"""params.yaml validation: every bad value gets one line naming the key, the value and what is allowed."""
import copy

import pytest

from lenet_mixup import variant
from lenet_mixup.params import load_params, read_yaml, validate
from lenet_mixup.stage import UserError
from tests.helpers import ROOT, TEST_PARAMS, project_params

DEFAULTS = read_yaml(project_params())


def with_value(section, key, value):
    params = copy.deepcopy(DEFAULTS)
    params.setdefault(section, {})[key] = value
    return params


def test_the_shipped_params_and_the_tests_params_are_valid():
    assert validate(copy.deepcopy(DEFAULTS)) == DEFAULTS
    load_params(path=ROOT / "params.yaml")


@pytest.mark.parametrize("section, key, value, message", [
    ("mixup", "aplha", 0.4, "unknown key 'mixup.aplha'; allowed in 'mixup': alpha, warmup"),
    ("mixup", "alpha", 0, "mixup.alpha = 0 is not allowed; it must be a number > 0"),
    ("mixup", "alpha", -1.0, "mixup.alpha = -1.0 is not allowed"),
    ("mixup", "alpha", "one", "mixup.alpha = 'one' is not allowed; it must be a number > 0"),
    ("mixup", "alpha", float("nan"), "mixup.alpha = nan is not allowed"),
    ("mixup", "warmup", -1, "mixup.warmup = -1 is not allowed; it must be an integer >= 0"),
    ("mixup", "warmup", 1.5, "mixup.warmup = 1.5 is not allowed; it must be an integer >= 0"),
    ("cutmix", "alpha", 0, "cutmix.alpha = 0 is not allowed; it must be a number > 0"),
    ("baseline", "alpha", 1.0, "unknown key 'baseline.alpha'; allowed in 'baseline': nothing (`{}`)"),
    ("train", "epochs", 0, "train.epochs = 0 is not allowed; it must be an integer >= 1"),
    ("train", "epochs", True, "train.epochs = True is not allowed"),
    ("train", "batch_size", 0, "train.batch_size = 0 is not allowed; it must be an integer >= 1"),
    ("train", "lr", 0, "train.lr = 0 is not allowed; it must be a number > 0"),
    ("train", "lr", -0.1, "train.lr = -0.1 is not allowed"),
    ("train", "seed", "zero", "train.seed = 'zero' is not allowed; it must be an integer >= 0"),
    ("train", "device", "tpu", "train.device = 'tpu' is not allowed; it must be one of auto, cpu, cuda"),
    ("train", "precision", "fp16", "train.precision = 'fp16' is not allowed; it must be one of fp32, bf16"),
    ("train", "steps_per_epoch", 0, "train.steps_per_epoch = 0 is not allowed; it must be null (all) or an integer"),
    ("train", "validation_steps", 2.5, "train.validation_steps = 2.5 is not allowed; it must be null (all)"),
    ("train", "optimizer", "sgd", "unknown key 'train.optimizer'"),
    ("data", "md5", "abc", "data.md5 = 'abc' is not allowed; it must be null or 32 lowercase hex digits"),
    ("data", "url", "", "data.url = '' is not allowed; it must be a non-empty string"),
    ("evaluate", "fgsm_eps_255", [1, 300], "evaluate.fgsm_eps_255 = [1, 300] is not allowed"),
    ("evaluate", "ece_bins", 0, "evaluate.ece_bins = 0 is not allowed; it must be an integer >= 1"),
    ("trian", "epochs", 3, "unknown section 'trian'"),
])
def test_bad_values_name_key_value_and_rule(section, key, value, message):
    """A variant's section is checked by the stages that read it (they name it), against its own schema."""
    params = with_value(section, key, value)
    with pytest.raises(UserError, match="^params.yaml: ") as error:
        validate(params, variant.available())
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_variants_section_is_checked_only_where_it_is_read():
    """The stages that never load a variant's module do not judge its keys (they could not without importing
    it), but they do refuse a section that is no variant's and a variant listed without its module."""
    params = with_value("mixup", "alpha", 0)
    assert validate(params) == params
    with pytest.raises(UserError, match="mixup.alpha = 0"):
        validate(params, ["mixup"])


@pytest.mark.parametrize("variants, message", [
    (["baseline", "cutmx"], "variants lists 'cutmx', which has no module (lenet_mixup/variants/cutmx.py)"),
    (["mixup"], "variants must list 'baseline'"),
    (["baseline", "mixup", "mixup"], "variants lists a variant twice"),
    ("baseline", "variants = 'baseline' is not allowed; it must be a list of variant names"),
    ([], "it must be a list of variant names"),
])
def test_a_bad_variants_list_is_named(variants, message):
    params = {**copy.deepcopy(DEFAULTS), "variants": variants}
    with pytest.raises(UserError, match="^params.yaml: ") as error:
        validate(params)
    assert message in str(error.value)


def test_a_listed_variant_needs_its_section():
    params = {**copy.deepcopy(DEFAULTS), "variants": ["baseline", "cutmix"]}
    del params["cutmix"]
    with pytest.raises(UserError, match="variants lists 'cutmix' but there is no 'cutmix' section; add one"):
        validate(params)


def test_cuda_is_refused_where_there_is_none(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="train.device = 'cuda' is not allowed; it must be auto or cpu"):
        validate(with_value("train", "device", "cuda"))


def test_missing_key_is_named():
    params = copy.deepcopy(DEFAULTS)
    del params["train"]["lr"]
    with pytest.raises(UserError, match="'train' lacks lr"):
        validate(params)


def test_unreadable_yaml_is_reported(tmp_path):
    (tmp_path / "params.yaml").write_text("train: [unclosed")
    with pytest.raises(UserError, match="is not valid YAML"):
        load_params(path=tmp_path / "params.yaml")


def params_file(tmp_path, lr):
    text = project_params().replace("lr: 0.001", f"lr: {lr}")
    assert f"lr: {lr}" in text
    (tmp_path / "params.yaml").write_text(text)
    return tmp_path / "params.yaml"


@pytest.mark.parametrize("written, value", [("1e-4", 1e-4), ("1.0e-3", 1e-3), (".5", 0.5), ("5e-1", 0.5), ("2", 2),
                                            ("1E-4", 1e-4)])
def test_numbers_mean_what_they_mean_to_dvc(tmp_path, written, value):
    """YAML 1.2, as DVC reads params.yaml: PyYAML (YAML 1.1) would read 1e-4 as the string '1e-4'."""
    assert load_params("train", path=params_file(tmp_path, written))["train"]["lr"] == value


@pytest.mark.parametrize("written", [".inf", ".nan", "-.inf"])
def test_infinite_and_nan_numbers_are_refused(tmp_path, written):
    with pytest.raises(UserError, match=r"train.lr = (inf|nan|-inf) is not allowed; it must be a number > 0"):
        load_params("train", path=params_file(tmp_path, written))


def test_the_stages_read_params_as_dvc_does(tmp_path):
    """The same text through DVC's own parser and through ours gives the same values."""
    from dvc.utils.serialize import parse_yaml
    text = project_params().replace("lr: 0.001", "lr: 1e-4").replace("alpha: 1.0", "alpha: .5")
    assert read_yaml(text) == parse_yaml(text, "params.yaml")


def test_the_tests_pin_every_param_whatever_the_workspace_holds(tmp_path):
    """After the README's `dvc exp run -S mixup.alpha=0.4`, an `exp apply` or a commit of other values,
    the tests' projects still start from the values the tests rely on, and keep the file's comments."""
    shipped = (ROOT / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(shipped.replace("alpha: 1.0", "alpha: 0.4").replace("seed: 0", "seed: 3"))
    text = project_params("/data/archive.tar.gz", "0" * 32, root=tmp_path, train={"epochs": 3})
    params = read_yaml(text)
    assert params["mixup"] == TEST_PARAMS["mixup"] and params["train"] == {**TEST_PARAMS["train"], "epochs": 3}
    assert params["data"] == {"url": "/data/archive.tar.gz", "md5": "0" * 32}
    assert "# lambda ~ Beta(alpha, alpha)" in text
