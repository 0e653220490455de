"""params.yaml validation: every bad value gets one line naming the key, the value and what is allowed."""
import copy

import pytest
import yaml

from stages.params import load_params, validate
from stages.stage import UserError
from tests.conftest import ROOT

DEFAULTS = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_value(section, key, value):
    params = copy.deepcopy(DEFAULTS)
    params.setdefault(section, {})[key] = value
    return params


def test_the_shipped_params_are_valid():
    assert validate(copy.deepcopy(DEFAULTS)) == DEFAULTS


@pytest.mark.parametrize("section, key, value, message", [
    ("mixup", "aplha", 0.4, "unknown key 'mixup.aplha'; allowed in 'mixup': alpha, warmup"),
    ("mixup", "alpha", 0, "mixup.alpha = 0 is not allowed; it must be a number > 0"),
    ("mixup", "alpha", -1.0, "mixup.alpha = -1.0 is not allowed"),
    ("mixup", "alpha", "one", "mixup.alpha = 'one' is not allowed; it must be a number > 0"),
    ("mixup", "alpha", float("nan"), "mixup.alpha = nan is not allowed"),
    ("mixup", "warmup", -1, "mixup.warmup = -1 is not allowed; it must be an integer >= 0"),
    ("mixup", "warmup", 1.5, "mixup.warmup = 1.5 is not allowed; it must be an integer >= 0"),
    ("train", "epochs", 0, "train.epochs = 0 is not allowed; it must be an integer >= 1"),
    ("train", "epochs", True, "train.epochs = True is not allowed"),
    ("train", "batch_size", 0, "train.batch_size = 0 is not allowed; it must be an integer >= 1"),
    ("train", "lr", 0, "train.lr = 0 is not allowed; it must be a number > 0"),
    ("train", "lr", -0.1, "train.lr = -0.1 is not allowed"),
    ("train", "seed", "zero", "train.seed = 'zero' is not allowed; it must be an integer >= 0"),
    ("train", "device", "tpu", "train.device = 'tpu' is not allowed; it must be one of auto, cpu, cuda"),
    ("train", "optimizer", "sgd", "unknown key 'train.optimizer'"),
    ("data", "md5", "abc", "data.md5 = 'abc' is not allowed; it must be null or 32 lowercase hex digits"),
    ("data", "url", "", "data.url = '' is not allowed; it must be a non-empty string"),
    ("evaluate", "fgsm_eps_255", [1, 300], "evaluate.fgsm_eps_255 = [1, 300] is not allowed"),
    ("evaluate", "ece_bins", 0, "evaluate.ece_bins = 0 is not allowed; it must be an integer >= 1"),
    ("trian", "epochs", 3, "unknown section 'trian'"),
])
def test_bad_values_name_key_value_and_rule(section, key, value, message):
    params = with_value(section, key, value)
    with pytest.raises(UserError, match="^params.yaml: ") as error:
        validate(params)
    assert message in str(error.value) and "\n" not in str(error.value)


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
