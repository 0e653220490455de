"""The study runner: a planned run trains from one commit's code, and its results are committed."""
import json
import shutil
import subprocess
import sys

from lenet_mixup.metrics import COLUMNS, read_tsv
from tests.conftest import Project, dvc_env
from tools.study import plan, run_name


def test_the_plan_is_the_study_the_issue_asks_for():
    runs = plan()
    assert len(runs) == 25 and len({r["name"] for r in runs}) == 25
    assert sum(r["precision"] == "bf16" for r in runs) == 6
    assert {r["alpha"] for r in runs if r["variant"] == "mixup"} == {0.2, 0.4, 1.0, 2.0}
    assert runs[0]["name"] == run_name("baseline", 0) == "baseline-fp32-seed0"
    assert runs[1]["overrides"] == {"train.seed": 0, "mixup.alpha": 1.0}


def test_a_run_trains_from_the_commit_and_commits_its_results(finished_project, tmp_path):
    # A repository holding the study tool and the pipeline, and prepared data from the tiny archive.
    project = finished_project
    prepared = tmp_path / "prepared"
    shutil.copytree(project.path / "data/prepared", prepared)
    subprocess.run(["git", "-C", str(project.path), "config", "user.name", "study"], check=True)
    commit = project.run("git", "rev-parse", "HEAD").stdout.strip()
    (project.path / "stages/train.py").write_text("raise SystemExit('the working tree is never run')\n")
    env = {**dvc_env(), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "tools.study", "run", "--only", "baseline-fp32-seed0",
                             "--prepared", str(prepared)], cwd=project.path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"code of commit {commit[:12]}" in result.stdout
    assert "[1/1] baseline-fp32-seed0 done" in result.stdout

    out = project.path / "study/runs/baseline-fp32-seed0"
    info = json.loads((out / "run.json").read_text())
    assert info["code_commit"] == commit and info["variant"] == "baseline" and info["seed"] == 0
    rows = read_tsv(out / "epochs.tsv")
    assert len(rows) == 2 and list(rows[0]) == COLUMNS  # the params of the commit: 2 epochs in this project
    assert json.loads((out / "summary.json").read_text())["final_eval_acc"] == rows[-1]["eval_acc"]
    assert "final" in json.loads((out / "evaluation.json").read_text())
    log = Project(project.path).run("git", "log", "-1", "--name-only", "--format=%s").stdout
    assert log.startswith("Study: baseline-fp32-seed0 (peak eval acc")
    assert "stages/train.py" not in log  # only the run's results were committed
    status = subprocess.run([sys.executable, "-m", "tools.study", "status"], cwd=project.path, env=env,
                            capture_output=True, text=True).stdout
    assert "done   baseline-fp32-seed0" in status and "1 of 25 runs done" in status
