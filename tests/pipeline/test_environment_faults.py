"""Real environment faults at the stages' outputs: a full disk, a read-only folder, a file in a folder's place.

Each ends the stage with one line naming the path, the cause and the remedy, no traceback; nothing is
half-written; the last good resume state survives; and once the fault is fixed the next run succeeds.
The full and read-only disks are real: small tmpfs file systems mounted over an output folder (root only;
elsewhere these tests skip and say why).
"""
import shutil
import subprocess
import sys
from contextlib import contextmanager

import pytest

from tests.helpers import dvc_env, learning_curve


@contextmanager
def tmpfs(folder, size, keep=()):
    """A tmpfs of `size` mounted on `folder`, holding copies of the folder's entries named in `keep`."""
    saved = folder.with_name(f".{folder.name}.saved")
    folder.mkdir(parents=True, exist_ok=True)
    for name in keep:
        copy = shutil.copytree if (folder / name).is_dir() else shutil.copy
        saved.mkdir(exist_ok=True)
        copy(folder / name, saved / name)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        shutil.rmtree(saved, ignore_errors=True)
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): these faults need root")
    try:
        if keep:
            shutil.copytree(saved, folder, dirs_exist_ok=True)
            shutil.rmtree(saved)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def remount(folder, options):
    subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True)


def stage(project, *args):
    return subprocess.run([sys.executable, "-m", *args], cwd=project.path, env=dvc_env(), capture_output=True,
                          text=True, timeout=300)


def one_line_error(result, path, cause):
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"could not write {path}: {cause}" in errors[0], result.stderr[-2000:]
    return errors[0]


def leftovers(folder):
    return [p.name for p in folder.rglob(".*.tmp*")]


def test_a_full_disk_under_the_prepared_arrays(finished_project):
    with tmpfs(finished_project.path / "data", "1500k", keep=["raw"]) as disk:
        error = one_line_error(stage(finished_project, "stages.prepare"), "data/prepared", "the disk is full")
        assert "free some space on it" in error
        assert leftovers(disk) == [] and not (disk / "prepared").exists()
        remount(disk, "size=32m")
        assert stage(finished_project, "stages.prepare").returncode == 0
        assert (disk / "prepared/train_x.npy").is_file()


def test_a_full_disk_under_the_checkpoints_and_the_resume_state(finished_project):
    """The resume state fills the disk at its second epoch: the first epoch's state stays, and training
    resumes from it once there is room, to the metrics of an uninterrupted run."""
    p = finished_project
    uninterrupted = learning_curve(p, "baseline")
    resume = p.path / "data/resume"
    with tmpfs(resume, "2600k"):
        result = stage(p, "stages.train", "baseline")
        one_line_error(result, "data/resume/baseline.pt", "the disk is full")
        assert "baseline epoch 2/2" in result.stdout and (resume / "baseline.pt").is_file()
        assert leftovers(resume) == []
        remount(resume, "size=32m")
        with tmpfs(p.path / "models", "300k"):
            result = stage(p, "stages.train", "baseline")
            one_line_error(result, "models/baseline/best.pt", "the disk is full")
            assert "resuming baseline after epoch 1" in result.stdout and leftovers(p.path / "models") == []
        assert stage(p, "stages.train", "baseline").returncode == 0  # room again: resumes, finishes
    assert learning_curve(p, "baseline") == uninterrupted


def test_read_only_metrics_and_results_folders(finished_project):
    metrics, results = finished_project.path / "metrics", finished_project.path / "results"
    with tmpfs(metrics, "16m", keep=[p.name for p in metrics.iterdir()]) as folder:
        before = (folder / "baseline/evaluation.json").read_bytes()
        remount(folder, "ro")
        error = one_line_error(stage(finished_project, "stages.evaluate", "baseline"),
                               "metrics/baseline/evaluation.json", "the file system is read-only")
        assert "remount it writable" in error
        assert (folder / "baseline/evaluation.json").read_bytes() == before
        remount(folder, "rw")
        assert stage(finished_project, "stages.evaluate", "baseline").returncode == 0
    with tmpfs(results, "16m", keep=[p.name for p in results.iterdir()]) as folder:
        remount(folder, "ro")
        one_line_error(stage(finished_project, "stages.compare"), "results/comparison.png",
                       "the file system is read-only")
        remount(folder, "rw")
        assert stage(finished_project, "stages.compare").returncode == 0


def test_a_file_where_a_folder_must_be_through_dvc(finished_project):
    resume = finished_project.path / "data/resume"
    shutil.rmtree(resume, ignore_errors=True)
    resume.write_text("not a folder")
    result = finished_project.dvc("repro", "--force", "train@mixup", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "error: could not write data/resume/mixup.pt: a file stands where a folder must be" in result.stderr
    resume.unlink()
    finished_project.dvc("repro", "train@mixup")
