"""bench/gpu_check.sh, the device check, where there is no GPU: its CPU smoke mode (every step, on the CPU)
and its staging of what a device call carries, so that it cannot rot unnoticed. The CUDA tests it runs on a
GPU machine are tests/unit/test_cuda.py."""
import subprocess
import sys

from tests.helpers import ROOT, dvc_env, synthetic_split, write_archive


def test_gpu_check_smoke_runs_on_the_cpu(tmp_path):
    """bench/gpu_check.sh --cpu-smoke: every step of the device check, on the CPU, on 1,000 training images,
    one epoch, so that its plumbing (archive, prepare, tests, benchmark, training, evaluation, report) is
    exercised wherever the suite runs. On a synthetic archive (--archive): the real JPEGs' archive step
    (make_archive.py) is the same copy of a file by then, and costs the suite ten seconds."""
    archive = tmp_path / "cifar-10-python.tar.gz"
    write_archive(archive, synthetic_split(1000, 0), synthetic_split(200, 1))
    source = ["--archive", str(archive)]
    out = tmp_path / "out"
    env = {**dvc_env(), "OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(["bash", "bench/gpu_check.sh", "--cpu-smoke", "--work", str(tmp_path / "work"), *source],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    for line in ("tests: ", "benchmark: ok", "train baseline: ok", "train mixup: ok", "evaluate mixup: ok",
                 "GOAL speed (baseline)", "GOAL vs DataLoader (mixup)", "GOAL accuracy (baseline)",
                 "GOAL graph path (mixup)", "evaluate: final acc", "cpu smoke: the verdicts above judge plumbing only"):
        assert line in log, f"{line!r} missing from the output:\n{log[-4000:]}"
    assert "skipped" in log and "no CUDA device" in log  # the CUDA tests said why they skipped
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["gpu_check.log", "report.txt", "report.json", "bench.txt", "baseline-summary.json", "mixup-summary.json",
         "baseline-epochs.tsv", "mixup-epochs.tsv"])


def test_gpu_check_stages_what_a_device_call_carries(tmp_path):
    """bench/gpu_check.sh --stage-carry: the data and the wheels the device machine lacks, in one folder.
    pip reads its wheel from a local folder here (PIP_NO_INDEX, PIP_FIND_LINKS), not from the index."""
    import zipfile
    source, wheels, staged = tmp_path / "shared", tmp_path / "wheelhouse", tmp_path / "device"
    source.mkdir()
    wheels.mkdir()
    for name in ("cifar10-jpeg.tar.gz", "make_archive.py"):
        (source / name).write_text(name)
    with zipfile.ZipFile(wheels / "ruamel_yaml-0.19.1-py3-none-any.whl", "w") as wheel:
        info = "ruamel_yaml-0.19.1.dist-info"
        wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: ruamel.yaml\nVersion: 0.19.1\n")
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    env = {**dvc_env(), "PYTHON": sys.executable, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels)}
    result = subprocess.run(["bash", "bench/gpu_check.sh", "--stage-carry", "--from", str(source),
                             "--data", str(staged)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (staged / "cifar10-jpeg.tar.gz").read_text() == "cifar10-jpeg.tar.gz"
    assert [w.name for w in (staged / "wheels").iterdir()] == ["ruamel_yaml-0.19.1-py3-none-any.whl"]
    assert "carry: [" in result.stdout
    missing = subprocess.run(["bash", "bench/gpu_check.sh", "--stage-carry", "--from", str(tmp_path / "nowhere"),
                              "--data", str(staged)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert missing.returncode == 1 and "not found (--from DIR names the folder holding it)" in missing.stderr
