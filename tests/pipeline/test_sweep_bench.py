"""The sweep benchmark the README quotes, on one tiny run (a smoke test; its figures mean nothing at this size)."""
import re
import subprocess
import sys

from tests.helpers import ROOT, dvc_env


def test_the_sweep_benchmark_runs_the_three_ways_and_prints_their_figures(finished_template, tmp_path):
    env = {**dvc_env(), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "bench.sweep_speed", "-S", "mixup.alpha=0.3", "--workers", "2",
                             "--timeout", "300", "--project", str(finished_template.path)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert out.startswith("1 run (-S mixup.alpha=0.3), 2 at a time for the queue and the sweep, 1 core(s)")
    for way in ("one by one (dvc exp run)", "dvc queue start -j 2", "python -m tools.sweep --workers 2"):
        row = re.search(rf"^{re.escape(way)} +([\d.]+) +([\d.]+) +([\d.]+) +(-?[\d.]+) +(\d+)$", out, re.M)
        assert row, f"no figures for {way}:\n{out}"
        assert float(row[1]) > 0 and float(row[3]) > 0 and row[5] == "1"  # wall, training seconds, experiments
    assert re.search(r"^one by one \(dvc exp run\) +[\d.]+ +1\.00 ", out, re.M)
