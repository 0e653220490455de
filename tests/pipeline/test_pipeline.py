"""The pipeline through DVC's own commands, in a temporary git repo on a tiny archive."""
import json
import struct

import pytest

from lenet_mixup.metrics import COLUMNS, read_tsv
from tests.helpers import ALL_STAGES, ran, truncate


def test_prepare_then_nothing_reruns(project):
    result = project.dvc("repro", "prepare")
    assert ran(result) == ["download", "prepare"]
    for name in ("train_x", "train_y", "eval_x", "eval_y"):
        assert (project.path / f"data/prepared/{name}.npy").is_file()
    assert len(json.loads(project.read("data/prepared/classes.json"))) == 10
    again = project.dvc("repro", "prepare")
    assert ran(again) == [] and "didn't change" in again.stdout
    assert "changed" not in project.dvc("status", "prepare").stdout


def test_wrong_md5_fails_clearly_and_leaves_nothing(project):
    project.set_params(data={"md5": "0" * 32})
    result = project.dvc("repro", "download", check=False)
    assert result.returncode != 0
    assert "md5 mismatch" in result.stderr and "expected 00000000000000000000000000000000" in result.stderr
    assert "another file, a damaged download or a tampered copy" in result.stderr
    assert "Only if you chose this archive on purpose, accept it with `dvc exp run -S data.md5=" in result.stderr
    assert not (project.path / "data/raw/cifar-10-python.tar.gz").exists()
    assert not any((project.path / "data").rglob("*.tmp*"))


def test_truncated_archive_fails_clearly(project, tmp_path, tiny_archive):
    broken = truncate(tiny_archive[0], tmp_path / "broken.tar.gz")
    project.set_params(data={"url": f"file://{broken}", "md5": None})
    result = project.dvc("repro", "prepare", check=False)
    assert result.returncode != 0
    assert "truncated or corrupt" in result.stderr
    assert not (project.path / "data/prepared").exists()


def test_an_archive_that_would_run_code_is_refused_even_without_a_checksum(project, tmp_path):
    """With data.md5 null nothing vouches for the archive: prepare must still never run what it holds."""
    from tests.helpers import RunsACommand, write_archive
    marker = tmp_path / "ran"
    crafted = tmp_path / "crafted.tar.gz"
    write_archive(crafted, overrides={"data_batch_1": {b"data": RunsACommand(marker), b"labels": [0]}})
    project.set_params(data={"url": str(crafted), "md5": None})
    result = project.dvc("repro", "prepare", check=False)
    assert result.returncode != 0 and not marker.exists()
    assert "cifar-10-batches-py/data_batch_1 holds posix.system" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (project.path / "data/prepared").exists()


def test_missing_local_archive_points_at_the_fix(project):
    project.set_params(data={"url": "/nonexistent/cifar-10-python.tar.gz"})
    result = project.dvc("repro", "download", check=False)
    assert result.returncode != 0 and "is not a file; set data.url" in result.stderr


def test_a_test_project_holds_no_remote_of_this_workspace(project, tmp_path):
    """The tests build their projects from the code alone: a remote added to this workspace (in
    .dvc/config, committed or not, or in .dvc/config.local) never reaches them; each adds its own."""
    assert project.dvc("remote", "list").stdout.strip() == ""
    project.dvc("remote", "add", "-d", "shared", str(tmp_path / "remote"))
    project.dvc("repro", "download")
    assert "1 file pushed" in project.dvc("push").stdout


def test_the_full_pipeline_writes_every_output(finished_project):
    project = finished_project
    first = project.first_run
    assert sorted(ran(first)) == sorted(ALL_STAGES)
    for variant in ("baseline", "mixup"):
        rows = read_tsv(project.path / f"metrics/{variant}/epochs.tsv")
        assert [r["epoch"] for r in rows] == [1, 2] and list(rows[0]) == COLUMNS
        summary = json.loads(project.read(f"metrics/{variant}/summary.json"))
        assert summary["final_eval_acc"] == rows[-1]["eval_acc"]
        assert (summary["device"], summary["train_path"], summary["precision"]) == ("cpu", "cpu", "fp32")
        assert summary["shards"] == 2 and 1 <= summary["workers"] <= 2  # what decides the bits; the speed
        assert f"train {variant}: done in" in first and f"evaluate {variant}: done in" in first
        for which in ("best", "final"):
            assert (project.path / f"models/{variant}/{which}.pt").is_file()
        assert png_size(project.path / f"metrics/{variant}/examples.png")[0] <= 1200
    assert "training path: cpu" in first
    width, height = png_size(project.path / "results/comparison.png")
    assert 800 < width <= 1200 and height > 500  # no wider than the plots page shows whole
    assert "| metric | baseline | mixup | mixup - baseline | best |" in project.read("results/comparison.md")
    curves = project.read("results/epochs.tsv")
    assert curves.splitlines()[0].startswith("variant\tcolor\tepoch")
    assert ran(project.dvc("repro")) == []  # everything cached


def png_size(path):
    png = path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])


@pytest.mark.parametrize("section, key, value, message", [
    ("train", "device", "tpu", "must be one of auto, cpu, cuda"),
    ("evaluate", "ece_bins", 0, "evaluate.ece_bins = 0 is not allowed; it must be an integer >= 1"),
])
def test_bad_params_fail_before_any_work(project, section, key, value, message):
    project.set_params(**{section: {key: value}})
    result = project.dvc("repro", "train@mixup", check=False)
    assert result.returncode != 0 and message in result.stderr
    assert not (project.path / "data/raw/cifar-10-python.tar.gz").exists()  # failed at the first stage
    assert not (project.path / "metrics/mixup/epochs.tsv").exists()


@pytest.mark.parametrize("key, value, message", [
    ("aplha", 0.4, "unknown key 'mixup.aplha'; allowed in 'mixup': alpha, warmup"),
    ("alpha", 0, "mixup.alpha = 0 is not allowed; it must be a number > 0"),
])
def test_a_bad_variant_param_fails_at_that_variants_first_stage(project, key, value, message):
    """A variant's section is checked against its own module's schema by the stages that read it (the
    others never load its code), before they do any work."""
    project.set_params(mixup={key: value})
    result = project.dvc("repro", "train@mixup", check=False)
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
    assert ran(result) == ["download", "prepare", "train@mixup"]
    assert "mixup epoch 1" not in result.stdout and not (project.path / "metrics/mixup/epochs.tsv").exists()


@pytest.mark.parametrize("variants, message", [
    ("[baseline, cutmx]", "variants lists 'cutmx', which has no module (lenet_mixup/variants/cutmx.py)"),
    ("[mixup]", "variants must list 'baseline', the reference of every comparison"),
    ("[baseline, mixup, mixup]", "variants lists a variant twice"),
])
def test_a_bad_variants_list_fails_before_any_work(project, variants, message):
    params = project.path / "params.yaml"
    params.write_text(params.read_text().replace("variants:\n- baseline\n- mixup", f"variants: {variants}"))
    result = project.dvc("repro", check=False)
    assert result.returncode != 0 and message in result.stderr + result.stdout
    assert not (project.path / "data/raw/cifar-10-python.tar.gz").exists()


def test_a_learning_rate_written_1e_4_means_to_the_stages_what_it_means_to_dvc(project):
    params = project.path / "params.yaml"
    params.write_text(params.read_text().replace("lr: 0.001", "lr: 1e-4"))
    project.dvc("repro", "train@baseline")
    assert {row["lr"] for row in read_tsv(project.path / "metrics/baseline/epochs.tsv")} == {0.0001}
    diff = json.loads(project.dvc("params", "diff", "--json").stdout)
    assert (diff["params.yaml"]["train.lr"]["old"], diff["params.yaml"]["train.lr"]["new"]) == (0.001, 0.0001)
