"""The benchmark the README shows runs: a few steps of every loop on synthetic data (a smoke test;
its figures mean nothing at this size)."""
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from lenet_mixup.params import read_yaml
from tests.helpers import ROOT, dvc_env


def test_benchmark_runs_every_loop_and_prints_its_figures(tmp_path):
    env = {**dvc_env(), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "bench.train_speed", "--steps", "10", "--warmup", "1",
                             "--images", "500", "--threads", "1"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "synthetic random images of CIFAR-10's shape (500 x 3 x 32 x 32)" in out
    assert "10 timed steps per loop and variant, in 1 windows of 10" in out  # --steps 10 times 10 steps
    for variant in read_yaml((ROOT / "params.yaml").read_text())["variants"]:  # what the pipeline trains
        for loop in ("project", "project-bf16", "dataloader", "bare", "bare-fast"):
            assert f"{variant:9}{loop:14}" in out, f"no figure for {variant} {loop}"
        assert f"{variant}: project/dataloader" in out and "project-bf16/project" in out
        assert re.search(rf"{variant} stage( \(\d+ plain \+ \d+ mixed epochs\))? +\d+\.\d min", out), out
    assert "peak RSS" in out


def test_benchmark_refuses_too_few_synthetic_images(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.train_speed", "--steps", "20", "--images", "100"],
                            cwd=tmp_path, env={**dvc_env(), "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert result.returncode == 2 and "--images must hold at least 1000 images" in result.stderr
    result = subprocess.run([sys.executable, "-m", "bench.train_speed", "--steps", "30"],
                            cwd=tmp_path, env={**dvc_env(), "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert result.returncode == 2 and "--steps must be below 20 or a multiple of 20" in result.stderr


def test_contention_benchmark_prints_its_table_and_the_forced_repro(tmp_path):
    """`python -m bench.contention`, tiny: every condition and setting, and the forced repro of a tiny project."""
    # OMP_NUM_THREADS=1: the benchmark as on a one-core machine (one fixed thread count to compare), for speed
    result = subprocess.run([sys.executable, "-m", "bench.contention", "--steps", "3", "--rounds", "1"], cwd=tmp_path,
                            env={**dvc_env(), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = result.stdout
    assert "data: synthetic images" in out
    for condition in ("alone", "busy core", "two at once"):
        assert re.search(rf"^{condition} +\d+ +\d+ +threads 1 +\d+\.\d\dx +\d+\.\d\dx$", out, re.M), out
    variants = read_yaml((ROOT / "params.yaml").read_text())["variants"]  # the stages foreach makes, one a variant
    stages = ["download", "prepare", *(f"{kind}@{name}" for kind in ("train", "evaluate", "examples")
                                       for name in variants), "compare", "plots_page"]
    for stage in stages:
        assert re.search(rf"^  {re.escape(stage)} +\d+\.\d s$", out, re.M), out
    assert re.search(r"total +\d+\.\d s = \d+\.\d x `import torch`", out), out
    assert not list(Path(tempfile.gettempdir()).glob("bench-repro-*")), "the tiny project is removed"


def make(*args):
    """`make ARGS...` in this checkout, as a developer runs it (its .venv is the one running the tests)."""
    return subprocess.run(["make", *args], cwd=ROOT, env={**dvc_env(), "PYTHONDONTWRITEBYTECODE": "1"},
                          capture_output=True, text=True, timeout=600)


def test_make_test_fast_runs_the_unit_tests():
    result = make("test-fast", "ARGS=-p no:cacheprovider -k test_lenet_shape_and_parameter_count")
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
    assert "tests/unit" in result.stdout or "python -m pytest tests/unit" in result.stdout


def test_make_lint_passes():
    result = make("lint")
    assert result.returncode == 0, result.stdout[-3000:]
