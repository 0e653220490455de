"""The benchmark the README shows runs: a few steps of every loop on synthetic data (a smoke test;
its figures mean nothing at this size)."""
import subprocess
import sys

from tests.conftest import ROOT, dvc_env


def test_benchmark_runs_every_loop_and_prints_its_figures(tmp_path):
    env = {**dvc_env(), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "bench.train_speed", "--steps", "20", "--warmup", "1",
                             "--images", "1000", "--threads", "1"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "synthetic random images of CIFAR-10's shape (1000 x 3 x 32 x 32)" in out
    for variant in ("baseline", "mixup"):
        for loop in ("project", "project-bf16", "dataloader", "bare", "bare-fast"):
            assert f"{variant:9}{loop:14}" in out, f"no figure for {variant} {loop}"
        assert f"{variant}: project/dataloader" in out and "project-bf16/project" in out
    assert "peak RSS" in out


def test_benchmark_refuses_too_few_synthetic_images(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.train_speed", "--steps", "20", "--images", "100"],
                            cwd=tmp_path, env={**dvc_env(), "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert result.returncode == 2 and "--images must hold at least 1000 images" in result.stderr
