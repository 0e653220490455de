"""tools/sweep.py on a local Ray (127.0.0.1): grids of tiny runs come back as DVC experiments, and the
report (tools/report.py) and the archive (tools/export.py) read them.

Sweeps of a finished tiny project, each shared by the tests that read it:
- on this machine, the workspace's DVC cache shared: alpha 0.2, 0.4 x seed 0, 1 on 2 workers; then, in a
  copy, CutMix turned on for seeds 0 and 1;
- through a bare git repository and a local-folder DVC remote (the stand-ins for a cluster's shared
  remotes): alpha 0.4 and -1, the worker of alpha 0.4 killed mid-run, after an epoch;
- two runs of many epochs, Ctrl-C'd mid-training, then run again: they resume, and are archived;
- two alphas after a commit of new epochs without a run (HEAD's dvc.lock is stale), the driver killed once
  the baseline has trained, then run again: each baseline stage is computed once.
Every sweep prints its runs' progress (`--progress-every 0`: a line per epoch), which the tests read too.
"""
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lenet_mixup.params import dump_yaml, read_yaml
from tests.helpers import ROOT, Project, default_sigint, dvc_env, project_params
from tools.runs import cache_dir, git_md5s, pipeline_stages, read_experiments, variant_of
from tools.sweep import SharedStages, apply, code_paths, expand, plan, resources

GRID = ["-S", "mixup.alpha=0.2,0.4", "-S", "train.seed=0,1"]
TIMING = ("train_seconds", "examples_per_sec", "workers")  # how fast, not what


def env():
    """The sweep from this checkout, and Ray on this machine's loopback alone, drivers too (a driver on the
    network address finds no node). No thread settings: the results must not depend on them."""
    return {**dvc_env(), "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def sweep(project, *args, tmpdir=None, **popen):
    command = [sys.executable, "-m", "tools.sweep", *args, "--workers", "2", "--progress-every", "0",
               *(["--tmpdir", str(tmpdir)] if tmpdir else [])]
    if popen:
        return subprocess.Popen(command, cwd=project.path, env=env(), text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, **popen)
    return subprocess.run(command, cwd=project.path, env=env(), text=True, capture_output=True, timeout=900)


def copy_project(template, path):
    shutil.copytree(template.path, path, symlinks=True)
    return Project(path)


def finished_lines(output):
    """{run name: its line} of the sweep's `[i/n] name ...` lines."""
    return {m.group(1): line for line in output.splitlines() if (m := re.match(r"\[\d+/\d+\] (\S+)", line))}


def progress_lines(output, name):
    """The progress lines of run `name` (`  NAME  running  ...  ETA ...  (sweep ETA ...)`)."""
    return [line for line in output.splitlines() if line.startswith(f"  {name}  running  ")]


def ran_in(lines, stage):
    """The runs whose `[i/n]` line (finished_lines) lists `stage` among the stages they ran."""
    return sorted(name for name, line in lines.items() if stage in line.split("(ran: ", 1)[1].rstrip(")").split(", "))


def exp_text(project, name, path):
    """A file as experiment `name` committed it."""
    refs = project.run("git", "for-each-ref", "--format=%(refname)", f"refs/exps/*/*/{name}").stdout.split()
    assert len(refs) == 1, f"experiment {name}: refs {refs}"
    return project.run("git", "show", f"{refs[0]}:{path}").stdout


def shown(project):
    """{experiment name: {metrics file: its data}}, as `dvc exp show --json` gives them."""
    found = {}
    for entry in json.loads(project.dvc("exp", "show", "--json").stdout):
        for exp in entry.get("experiments") or []:
            for rev in exp.get("revs") or []:
                found[rev["name"]] = {path: m.get("data") for path, m in (rev["data"].get("metrics") or {}).items()}
    return found


def by_alpha_seed(shown_json):
    """{(alpha, seed): {variant: {"summary": ..., "evaluation": ...}}} of the experiments `dvc exp show` lists."""
    found = {}
    for r in read_experiments(shown_json)[0]:
        found.setdefault((r.params["mixup.alpha"], r.params["train.seed"]), {})[r.variant] = r.files
    return found


def report(project, *args):
    """`python -m tools.report ARGS` in the project; returns report.md (after a check that it succeeded)."""
    result = subprocess.run([sys.executable, "-m", "tools.report", *args], cwd=project.path, env=env(),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    out = args[args.index("--out") + 1] if "--out" in args else project.path / "reports"
    return (Path(project.path) / out / "report.md").read_text()


def cell(text, section, row_start, header):
    """The cell of a Markdown table: the table after heading `section`, the row that starts with
    `row_start`, the column `header`."""
    lines = [line for line in text.split(section, 1)[1].split("\n## ", 1)[0].splitlines() if line.startswith("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return next(r for r in rows if r[0] == row_start)[rows[0].index(header)]


def without_timing(summary):
    return {k: v for k, v in summary.items() if k not in TIMING}


def results(project, name):
    """An experiment's metrics that do not depend on time: each variant's summary (less timing) and evaluation."""
    metrics = shown(project)[name]
    return {v: {"summary": without_timing(metrics[f"metrics/{v}/summary.json"]),
                "evaluation": metrics[f"metrics/{v}/evaluation.json"]}
            for v in [variant_of(path, "summary.json") for path in metrics] if v}


def processes():
    """{pid: (cmdline, cwd)} of this machine's processes we may read."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            found[int(proc.name)] = ((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(),
                                     os.readlink(proc / "cwd"))
        except OSError:
            continue
    return found


def test_the_grid_is_crossed_as_dvc_does_and_runs_done_are_matched_by_params():
    params = read_yaml(project_params())
    runs = expand(["mixup.alpha=0.2,0.4", "train.seed=range(0,2)", "evaluate.fgsm_eps_255=[1,16]"], params)
    assert [r.overrides[:2] for r in runs] == [["mixup.alpha=0.2", "train.seed=0"], ["mixup.alpha=0.2", "train.seed=1"],
                                               ["mixup.alpha=0.4", "train.seed=0"], ["mixup.alpha=0.4", "train.seed=1"]]
    assert runs[0].values == {"mixup.alpha": 0.2, "train.seed": 0, "evaluate.fgsm_eps_255": [1, 16]}
    runs = expand(["mixup.alpha=0.2,0.4", "train.seed=0,1"], params)
    existing = {"old": apply(params, runs[0].values), "alpha0.4-seed0": params}  # that name, other params
    todo, done = plan(runs, params, existing)
    assert [r.name for r in done] == ["old"]
    assert [r.name for r in todo] == ["alpha0.2-seed1", "alpha0.4-seed0-2", "alpha0.4-seed1"]
    with pytest.raises(Exception, match="params.yaml has no such key"):
        expand(["mixup.alhpa=1"], params)


def shared_stages(project, values, monkeypatch, cache=None, lock=True):
    """SharedStages as the sweep builds it in `project` for runs of these values: from HEAD's dvc.lock
    (`lock`) and the project's cache (or `cache`)."""
    monkeypatch.chdir(project.path)
    params = read_yaml(project.read("params.yaml"))
    dvc_yaml = read_yaml(project.read("dvc.yaml"))
    code = git_md5s("HEAD", code_paths(*[pipeline_stages(dvc_yaml, apply(params, v)) for v in values]))
    return SharedStages(dvc_yaml, params, read_yaml(project.read("dvc.lock")) if lock else None, code,
                        cache or cache_dir())


def stages(needs):
    return {stage for stage, _ in needs}


def test_runs_that_would_compute_the_same_stage_take_turns(finished_template, monkeypatch, tmp_path):
    params = read_yaml(project_params())
    runs = expand(["mixup.alpha=0.2,0.4", "train.seed=0,1"], params)
    shared = shared_stages(finished_template, [r.values for r in runs], monkeypatch)
    for r in runs:
        r.needs = shared.needs(r)
    a2s0, a2s1, a4s0, a4s1 = runs
    # Seed 0's baseline is HEAD's: its stages are restored. (compare depends on a folder, metrics/, whose
    # hash is not worked out: it counts as computed by every run.)
    assert stages(a2s0.needs) == {"train@mixup", "evaluate@mixup", "examples@mixup", "compare"}
    assert stages(a2s1.needs & a4s1.needs) == {"train@baseline", "evaluate@baseline", "examples@baseline"}
    assert not a2s0.needs & a4s0.needs  # each its own mixup
    assert shared.may_start(a4s0, [a2s0, a2s1]) and not shared.may_start(a4s1, [a2s1])
    shared.done |= a2s1.needs  # seed 1's baseline trained: now in the run-cache
    assert shared.may_start(a4s1, [a4s0])
    # HEAD's own params: everything restored, HEAD's keys as DVC computes them
    assert stages(shared.needs(expand(["mixup.alpha=1.0"], params)[0])) == {"compare"}
    nothing_computed = shared_stages(finished_template, [{}], monkeypatch, cache=tmp_path, lock=False)
    first, second = expand(["mixup.alpha=0.2,0.4"], params)
    first.needs, second.needs = nothing_computed.needs(first), nothing_computed.needs(second)
    assert {"download", "prepare", "train@baseline", "evaluate@baseline"} <= stages(first.needs & second.needs)
    assert not nothing_computed.may_start(second, [first])  # both would prepare the data: one prepares it


def test_a_run_that_lists_a_variant_more_computes_its_stages_and_shares_the_others(finished_template, monkeypatch):
    """`-S variants=...`: each run's stages are dvc.yaml's as DVC resolves them for its own params."""
    params = read_yaml(project_params())
    runs = expand(["variants=[baseline,mixup],[baseline,mixup,cutmix]", "train.seed=0,1"], params)
    assert runs[2].values == {"variants": ["baseline", "mixup", "cutmix"], "train.seed": 0}
    assert apply(params, runs[2].values)["variants"] == ["baseline", "mixup", "cutmix"]
    todo, done = plan(runs, params, {"head": params})
    assert [r.name for r in done] == ["head"]
    assert [r.name for r in todo] == ["variants_baseline_mixup-seed1", "variants_baseline_mixup_cutmix-seed0",
                                      "variants_baseline_mixup_cutmix-seed1"]
    shared = shared_stages(finished_template, [r.values for r in todo], monkeypatch)
    for r in todo:
        r.needs = shared.needs(r)
    two_s1, three_s0, three_s1 = todo
    assert stages(three_s0.needs) == {"train@cutmix", "evaluate@cutmix", "examples@cutmix", "compare"}
    assert "train@baseline" in stages(two_s1.needs & three_s1.needs)  # one baseline of seed 1
    assert not shared.may_start(three_s1, [two_s1]) and shared.may_start(three_s0, [two_s1])


class FakeRay:
    def __init__(self, cpus, gpus=0):
        self.total = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}

    def cluster_resources(self):
        return self.total

    def nodes(self):
        return [{"Alive": True, "Resources": self.total}]


def test_one_gpu_per_run_where_there_are_gpus_and_threads_that_never_oversubscribe():
    assert resources(FakeRay(2), None, None, None) == (2, 1, 0)
    assert resources(FakeRay(16), 4, None, None) == (4, 4, 0)
    assert resources(FakeRay(16, gpus=8), None, None, None) == (8, 2, 1)
    assert resources(FakeRay(16, gpus=1), None, None, 0.5) == (2, 8, 0.5)
    with pytest.raises(Exception, match="no Ray node has more than 16 CPUs"):
        resources(FakeRay(16), 1, 32, None)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, finished_template):
    project = copy_project(finished_template, tmp_path_factory.mktemp("local") / "project")
    result = sweep(project, *GRID)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Token authentication" not in result.stdout + result.stderr  # said explicitly: no warning
    return project, result.stdout


def test_four_runs_on_two_workers_come_back_as_experiments(local_sweep):
    project, out = local_sweep
    lines = finished_lines(out)
    assert sorted(lines) == ["alpha0.2-seed0", "alpha0.2-seed1", "alpha0.4-seed0", "alpha0.4-seed1"], out
    assert "4 of 4 runs done" in out and "2 at a time, 1 core each, on local Ray on 127.0.0.1" in out
    assert re.search(r"alpha0.4-seed1  mixup.alpha=0.4 train.seed=1  peak/final eval acc: "
                     r"baseline 0\.\d{4}/0\.\d{4}  mixup 0\.\d{4}/0\.\d{4}  \d+ s", lines["alpha0.4-seed1"])
    # Seed 1's baseline is trained by one run and restored from the shared run-cache by the other;
    # seed 0's is the committed one. Every run trains its own mixup variant.
    assert sum("train@baseline" in line for line in lines.values()) == 1, out
    assert all("train@mixup" in line for line in lines.values()), out

    shown = json.loads(project.dvc("exp", "show", "--json").stdout)
    found = by_alpha_seed(shown)
    grid = [(0.2, 0), (0.2, 1), (0.4, 0), (0.4, 1)]
    assert set(grid) <= set(found)
    mixups = [json.dumps(found[key]["mixup"]["summary"], sort_keys=True) for key in grid]
    assert len(set(mixups)) == 4, "each run has its own metrics"
    assert found[(0.2, 1)]["baseline"] == found[(0.4, 1)]["baseline"] != found[(0.2, 0)]["baseline"]
    for name, alpha, seed in [("alpha0.2-seed1", 0.2, 1), ("alpha0.4-seed0", 0.4, 0)]:
        params = exp_text(project, name, "params.yaml")
        assert f"alpha: {alpha}" in params and f"seed: {seed}" in params
    assert project.run("git", "status", "--porcelain").stdout == "", "the workspace is untouched"


def test_each_run_shows_its_epochs_and_an_eta_as_it_goes(local_sweep):
    """Off a terminal, as here: a line per run at each change of its state or stage and, with --progress-every 0,
    at every epoch, each with the run's ETA and the sweep's; all before the run's own `[i/n]` line."""
    _, out = local_sweep
    epoch_line = re.compile(r"^  (\S+)  running  (train@\w+)  epoch (\d+)/2  eval acc 0\.\d{4}  ETA \d+ s  "
                            r"\(sweep ETA \d+ s\)$")
    epochs = {}
    for name in finished_lines(out):
        assert progress_lines(out, name), out
        for line in progress_lines(out, name):
            if m := epoch_line.match(line):
                epochs.setdefault((name, m.group(2)), []).append(int(m.group(3)))
        last = max(i for i, line in enumerate(out.splitlines()) if line.startswith(f"  {name}  running"))
        assert last < out.splitlines().index(finished_lines(out)[name])
    # every run trains its mixup; seed 1's baseline is trained by one of its two runs
    assert epochs == {**{(name, "train@mixup"): [1, 2] for name in finished_lines(out)},
                      next(key for key in epochs if key[1] == "train@baseline"): [1, 2]}, out


def run_alone(project, folder, variant, **values):
    """One variant trained and evaluated with the project's params and `values` set, its stage scripts run
    directly (no DVC, no cache: nothing restored, no thread settings); its results as results()."""
    shutil.copytree(project.path / "data/prepared", folder / "data/prepared")
    params = read_yaml(project.read("params.yaml"))
    for key, value in values.items():
        section, name = key.split(".")
        params[section][name] = value
    (folder / "params.yaml").write_text(dump_yaml(params))
    for stage in ("train", "evaluate"):
        done = subprocess.run([sys.executable, "-m", f"stages.{stage}", variant], cwd=folder, env=env(),
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    metrics = folder / "metrics" / variant
    return {"summary": without_timing(json.loads((metrics / "summary.json").read_text())),
            "evaluation": json.loads((metrics / "evaluation.json").read_text())}


def test_a_run_of_the_sweep_equals_its_stages_run_alone(local_sweep, tmp_path):
    """The sweep's runs (two at a time, one core each, seed 1's baseline trained by one run and restored by
    the other) give the bits of the stage scripts run alone (every core, no DVC, nothing restored)."""
    project, _ = local_sweep
    for variant in ("baseline", "mixup"):
        alone = run_alone(project, tmp_path / variant, variant, **{"mixup.alpha": 0.4, "train.seed": 1})
        assert alone == results(project, "alpha0.4-seed1")[variant]


def test_the_experiments_work_with_dvc_and_the_report(local_sweep, tmp_path):
    project = copy_project(local_sweep[0], tmp_path / "project")
    (project.path / "study").mkdir()  # the default claims file, and a claim of the user's own
    claims = (ROOT / "study/claims.yaml").read_text() + (
        "  - {claim: alpha 0.4 beats 0.2, metric: final eval accuracy,\n"
        "     configuration: {variant: mixup, mixup.alpha: 0.4}, against: {mixup.alpha: 0.2}}\n")
    (project.path / "study/claims.yaml").write_text(claims)
    text = report(project)
    assert "its own row (HEAD) is not a point of their grid: not counted." in text  # HEAD: alpha 1.0
    assert "6 results in 3 configurations; seeds (`train.seed`): 0, 1. Swept: `mixup.alpha` (0.2, 0.4)." in text
    assert "2 more results were the same computation" in text  # each seed's baseline: once
    claim = cell(text, "## Claims", "alpha 0.4 beats 0.2", "difference [95% CI]")
    assert re.fullmatch(r"[-+]\d\.\d{4} \[[-+]\d\.\d{4}, [-+]\d\.\d{4}\] \(n=2\)", claim), claim
    assert cell(text, "## Claims", "alpha 0.4 beats 0.2", "verdict").strip("*") in ("supported", "contradicted",
                                                                                    "not shown")
    against = cell(text, "## Against `variant=baseline`", "final eval accuracy", "mixup alpha=0.4 - baseline")
    assert against.endswith("(n=2)") and " [" in against
    assert (project.path / "reports/report.png").read_bytes()[:4] == b"\x89PNG"
    diff = project.dvc("metrics", "diff", "alpha0.2-seed0", "alpha0.4-seed1").stdout
    assert "metrics/mixup/summary.json" in diff and "final_eval_acc" in diff
    plots = project.dvc("plots", "diff", "alpha0.2-seed0", "alpha0.4-seed1", "-o", str(tmp_path / "plots"))
    assert (tmp_path / "plots" / "index.html").is_file(), plots.stdout
    project.dvc("exp", "apply", "alpha0.4-seed1")
    assert "alpha: 0.4" in project.read("params.yaml") and "seed: 1" in project.read("params.yaml")
    summary = shown(project)["alpha0.4-seed1"]["metrics/mixup/summary.json"]
    assert json.loads(project.read("metrics/mixup/summary.json")) == summary
    assert project.dvc("status").stdout.strip() == "Data and pipelines are up to date."  # outputs came back too


def test_without_the_baseline_the_grids_first_alpha_is_the_reference(local_sweep, tmp_path):
    project, _ = local_sweep
    text = report(project, "--variant", "mixup", "--claims", str(ROOT / "study/claims.yaml"), "--out",
                  str(tmp_path))
    assert "4 results in 2 configurations" in text and "## Against `mixup.alpha=0.2`" in text
    against = cell(text, "## Against", "peak eval accuracy", "mixup alpha=0.4 - mixup alpha=0.2")
    assert re.fullmatch(r"[-+]\d\.\d{4} \[[-+]\d\.\d{4}, [-+]\d\.\d{4}\] \(n=2\)", against), against


def test_a_run_with_a_variant_more_trains_it_alone_and_reports_it(local_sweep, ray_cluster, tmp_path):
    """CutMix, built in but off, turned on for two seeds (`-S 'variants=[baseline,mixup,cutmix]'`): the runs train
    cutmix and restore the baseline (HEAD's, and the local sweep's seed 1); the report has cutmix as a variant of
    its own, the baseline pooled with the runs without it; an exported run holds the three variants."""
    project = copy_project(local_sweep[0], tmp_path / "project")
    grid = ["-S", "variants=[baseline,mixup,cutmix]", "-S", "train.seed=0,1"]
    result = sweep(project, "--address", "auto", *grid)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = finished_lines(result.stdout)
    names = ["variants_baseline_mixup_cutmix-seed0", "variants_baseline_mixup_cutmix-seed1"]
    assert sorted(lines) == names
    for line in lines.values():
        assert "train@cutmix" in line and "train@baseline" not in line, result.stdout
        assert re.search(r"baseline 0\.\d{4}/0\.\d{4}  mixup 0\.\d{4}/0\.\d{4}  cutmix 0\.\d{4}/0\.\d{4}", line)
    claims = str(ROOT / "study/claims.yaml")
    text = report(project, "--claims", claims, "--out", str(tmp_path / "experiments"))
    # HEAD (alpha 1.0, seed 0, no cutmix) is a grid point; its baseline and mixup are the cutmix run's of seed 0
    assert "10 results in 5 configurations" in text and "6 more results were the same computation" in text, text
    assert "Swept: `mixup.alpha` (0.2, 0.4, 1.0)." in text
    assert cell(text, "## Configurations", "cutmix", "seeds") == cell(text, "## Configurations", "baseline",
                                                                       "seeds") == "2: 0, 1"
    against = cell(text, "## Against `variant=baseline`", "final eval accuracy", "cutmix - baseline")
    assert re.fullmatch(r"[-+]\d\.\d{4} \[[-+]\d\.\d{4}, [-+]\d\.\d{4}\] \(n=2\)", against), against
    exported = subprocess.run([sys.executable, "-m", "tools.export", names[1], "--to", "runs"], cwd=project.path,
                              env=env(), capture_output=True, text=True)
    assert exported.returncode == 0, exported.stderr
    folder = project.path / "runs" / names[1]
    assert sorted(p.name for p in folder.iterdir()) == ["baseline", "cutmix", "mixup", "params.yaml", "run.json"]


def test_the_same_sweep_again_skips_every_run_done(local_sweep):
    project, _ = local_sweep
    result = sweep(project, *GRID)
    assert result.returncode == 0, result.stderr
    assert "4 runs, 4 already done, 0 to run" in result.stdout
    assert "Ray" not in result.stdout + result.stderr  # not even started


def test_a_dirty_pipeline_is_refused_and_the_grid_checked(local_sweep, tmp_path):
    project = copy_project(local_sweep[0], tmp_path / "project")
    project.set_params(mixup={"alpha": 0.5})
    result = sweep(project, "-S", "mixup.alpha=0.3")
    assert result.returncode == 1
    assert result.stderr.startswith("error: uncommitted changes to params.yaml: every run is a clone of commit ")
    project.run("git", "checkout", "--", "params.yaml")
    result = sweep(project, "-S", "mixup.alhpa=0.3")
    assert result.returncode == 1 and "error: -S mixup.alhpa: params.yaml has no such key" in result.stderr


def kill_worker_after_an_epoch(name, temp):
    """SIGKILL the Ray worker of run `name` while its training stage runs, once that has saved a resume state
    (after its first epoch); return the pids of the worker and of the stage, or None while the stage has not
    started. The stage runs in steps of 20 ms, stopped (SIGSTOP) in between, so that it cannot end unseen.

    The run's supervisor names its worker in its command line (the spec, JSON)."""
    running = processes()
    stage = next((pid for pid, (cmd, cwd) in running.items() if cmd.split()[1:3] == ["-m", "stages.train"]
                  and cwd.startswith(str(temp)) and f"-{name}-" in cwd), None)
    if stage is None:
        return None
    saved = temp / "lenet-mixup-sweep-resume" / name
    try:
        while True:
            os.kill(stage, signal.SIGSTOP)
            if list(saved.glob("*.pt")):
                break
            os.kill(stage, signal.SIGCONT)
            time.sleep(0.02)
    except ProcessLookupError:
        pytest.fail(f"{name}'s training stage ended before it was seen to save a resume state")
    supervisor = next(cmd for cmd, _ in running.values() if '"worker_pid"' in cmd and f'"name": "{name}"' in cmd)
    worker = int(re.search(r'"worker_pid": (\d+)', supervisor).group(1))
    os.kill(worker, signal.SIGKILL)  # its supervisor then kills its commands, the stopped stage among them
    return worker, stage


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray cluster started as the README's Cluster section starts one (`ray start --head`), on loopback
    only; the sweep finds it with `--address auto`. `ray start` runs in a session of its own, so every
    daemon it starts is in its process group, and the end stops exactly those: `ray stop` would stop
    every Ray on this machine, a sweep its user is running too."""
    import socket
    with socket.socket() as probe:  # a free port: with --port=0 a driver's `--address auto` finds no GCS
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray = str(Path(sys.executable).parent / "ray")
    start = subprocess.Popen([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                              "--include-dashboard=false", "--disable-usage-stats"], env=env(), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    output = start.communicate(timeout=300)[0]

    def stop():
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(start.pid, sig)
            time.sleep(1)
    if start.returncode != 0:
        stop()
        pytest.fail(f"`ray start --head` failed:\n{output[-3000:]}")
    yield
    stop()


@pytest.fixture(scope="module")
def remote_sweep(tmp_path_factory, finished_template, ray_cluster):
    """alpha 0.4 and -1 through the stand-in remotes, on a running Ray cluster (--address auto); alpha 0.4's
    Ray worker killed while its training stage runs, after an epoch."""
    base = tmp_path_factory.mktemp("remote")
    project = copy_project(finished_template, base / "project")
    project.run("git", "init", "-q", "--bare", str(base / "origin.git"))
    project.run("git", "remote", "add", "origin", str(base / "origin.git"))
    project.dvc("remote", "add", "-d", "shared", str(base / "dvc-remote"))
    project.commit("the shared remotes")
    project.run("git", "push", "-q", "origin", "HEAD:main")
    temp = base / "runs"
    temp.mkdir()
    proc = sweep(project, "--address", "auto", "--remote", "origin", "-S", "mixup.alpha=0.4,-1", tmpdir=temp,
                 start_new_session=True)
    killed, deadline = None, time.time() + 300
    while killed is None:
        assert proc.poll() is None and time.time() < deadline, f"alpha 0.4 never ran a stage: {proc.communicate()}"
        killed = kill_worker_after_an_epoch("alpha0.4", temp)
        time.sleep(0.05)
    out, err = proc.communicate(timeout=900)
    return project, base, proc.returncode, out, err, killed


def test_a_killed_worker_is_retried_and_its_run_completes(remote_sweep, local_sweep):
    project, base, code, out, err, killed = remote_sweep
    assert not any(Path(f"/proc/{pid}").exists() for pid in killed)
    line = finished_lines(out)["alpha0.4"]
    assert "FAILED" not in line and "train@mixup" in line, out + err
    # the retry shows its attempt, and the epoch its training stage resumed after
    retried = [line for line in progress_lines(out, "alpha0.4") if "  attempt 2" in line]
    assert retried and re.search(r"  attempt 2, resumed after epoch [12]  train@mixup  epoch [12]/2  ETA ",
                                 "\n".join(retried)), out
    assert results(project, "alpha0.4") == results(local_sweep[0], "alpha0.4-seed0")  # as if nothing happened
    assert sorted(p.name for p in (base / "runs").iterdir()) == ["lenet-mixup-sweep-cache", "lenet-mixup-sweep-resume"]
    assert list((base / "runs/lenet-mixup-sweep-resume").iterdir()) == [], "temp and resume folders removed"


def test_progress_comes_through_ray_from_a_cluster_that_shares_no_folder(remote_sweep):
    _, _, _, out, _, _ = remote_sweep
    assert re.search(r"^  alpha0\.4  running  (attempt 2, resumed after epoch \d  )?train@mixup  epoch 2/2  "
                     r"eval acc 0\.\d{4}  ETA \d+ s  \(sweep ETA ", out, re.M), out
    assert "  alpha-1  running  train@mixup  ETA " in out  # where it failed


def test_a_run_with_bad_params_is_reported_and_the_others_complete(remote_sweep):
    project, _, code, out, err, _ = remote_sweep
    assert code == 1
    assert "1 of 2 runs done" in out and err.strip().endswith("error: 1 run failed: alpha-1")
    assert re.search(r"^\[\d/2\] alpha-1  FAILED after \d+ s  mixup.alpha=-1: train@mixup: error: params.yaml: "
                     r"mixup.alpha = -1 is not allowed; it must be a number > 0$", out, re.M), out
    assert "    | ERROR: failed to reproduce 'train@mixup'" in out  # the log's tail follows the line
    assert (project.path / ".dvc/tmp/sweep/alpha-1.log").is_file()
    names = [e["name"] for e in json.loads(project.dvc("exp", "show", "--json").stdout)[1]["experiments"]]
    assert names == ["alpha0.4"]


def test_an_alpha_only_grid_never_trains_the_baseline(remote_sweep):
    project, _, _, out, _, _ = remote_sweep
    assert not any("train@baseline" in line for line in finished_lines(out).values())
    logs = [p.read_text() for p in (project.path / ".dvc/tmp/sweep").iterdir()]
    assert len(logs) == 2 and all("Stage 'train@baseline' didn't change, skipping" in log for log in logs)
    assert not any("Running stage 'train@baseline'" in log for log in logs)


def test_a_fresh_clone_pulls_every_experiment_from_the_remotes(remote_sweep, tmp_path):
    project, base, *_ = remote_sweep
    clone = Project(tmp_path / "clone")
    subprocess.run(["git", "clone", "-q", "-b", "main", str(base / "origin.git"), str(clone.path)], check=True)
    clone.dvc("exp", "pull", "origin", "--rev", "HEAD")
    found = by_alpha_seed(json.loads(clone.dvc("exp", "show", "--json").stdout))
    assert found[(0.4, 0)]["mixup"]["summary"] == shown(project)["alpha0.4"]["metrics/mixup/summary.json"]
    clone.dvc("exp", "apply", "alpha0.4")
    assert (clone.path / "models/mixup/final.pt").is_file() and (clone.path / "data/prepared/train_x.npy").is_file()
    assert clone.dvc("status").stdout.strip() == "Data and pipelines are up to date."


def test_the_archive_from_a_fresh_clone_gives_the_experiments_report(local_sweep, tmp_path):
    """Export every experiment, commit; a clone (no experiment refs, no DVC cache) reports the same."""
    project = copy_project(local_sweep[0], tmp_path / "project")
    claims = str(ROOT / "study/claims.yaml")
    from_experiments = report(project, "--claims", claims, "--out", str(tmp_path / "experiments"))
    exported = subprocess.run([sys.executable, "-m", "tools.export", "--to", "runs"], cwd=project.path, env=env(),
                              capture_output=True, text=True)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.count(" (committed)") == 4 and "alpha0.4-seed1 -> runs/" in exported.stdout
    log = project.run("git", "log", "-4", "--name-only", "--format=%s").stdout
    assert log.count("Run alpha") == 4 and {line.split("/")[0] for line in log.splitlines() if "/" in line} == {"runs"}
    run_dir = project.path / "runs/alpha0.4-seed0"
    assert sorted(p.name for p in (run_dir / "mixup").iterdir()) == ["epochs.tsv", "evaluation.json", "fgsm.tsv",
                                                                     "reliability.tsv", "summary.json"]
    info = json.loads((run_dir / "run.json").read_text())
    # exported by hand, with no OMP_NUM_THREADS here: the cores it ran on are unknown to run.json, and
    # summary.json has its own (its workers, and the shards that decided its bits)
    assert info["threads"] is None and info["code_commit"] == project.run("git", "rev-parse", "HEAD~4").stdout.strip()
    assert json.loads((run_dir / "mixup/summary.json").read_text())["shards"] == 2
    clone = Project(tmp_path / "clone")
    subprocess.run(["git", "clone", "-q", str(project.path), str(clone.path)], check=True)
    assert clone.run("git", "for-each-ref", "refs/exps").stdout == ""
    from_archive = report(clone, "--archive", "runs", "--claims", claims, "--out", str(tmp_path / "archive"))
    body = [text.split("\n", 3)[3].split("## Provenance")[0] for text in (from_experiments, from_archive)]
    assert body[0] == body[1], "the archive's report differs from the experiments'"
    assert (tmp_path / "archive/report.png").read_bytes() == (tmp_path / "experiments/report.png").read_bytes()
    assert "- threads: `None` (4 runs)" in from_archive  # the provenance says what is known, no more


@pytest.fixture(scope="module")
def resumed_sweep(tmp_path_factory, finished_template, ray_cluster):
    """Two runs of many epochs, Ctrl-C'd as soon as a training stage has saved a resume state (the state of
    things then recorded), then the same sweep again, with --archive; on the module's Ray cluster."""
    base = tmp_path_factory.mktemp("resume")
    project, temp = copy_project(finished_template, base / "project"), base / "runs"
    temp.mkdir()
    grid = ["--address", "auto", "-S", "train.epochs=6", "-S", "train.seed=0,1", "--archive", "runs"]
    states = project.path / ".dvc/tmp/sweep/resume"
    refs = project.run("git", "for-each-ref", "refs/exps").stdout
    proc = sweep(project, *grid, tmpdir=temp, start_new_session=True, preexec_fn=default_sigint)
    deadline = time.time() + 300
    while not list(states.glob("*/*.pt")):
        assert proc.poll() is None and time.time() < deadline, f"no resume state: {proc.communicate()}"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C does: the whole foreground process group
    out, err = proc.communicate(timeout=120)
    interrupted = {"code": proc.returncode, "err": err, "temp": list(temp.iterdir()),
                   "left": [cmd for cmd, cwd in processes().values() if cwd.startswith(str(temp))],
                   "refs": project.run("git", "for-each-ref", "refs/exps").stdout == refs,
                   "status": project.run("git", "status", "--porcelain").stdout,
                   "saved": {p.parent.name: p.stem for p in states.glob("*/*.pt")}}
    again = sweep(project, *grid)
    assert again.returncode == 0, again.stdout + again.stderr
    return project, interrupted, again.stdout


def test_ctrl_c_stops_every_run_and_leaves_the_workspace_untouched(resumed_sweep):
    _, interrupted, _ = resumed_sweep
    assert interrupted["code"] == 130, interrupted["err"]
    assert "interrupted: stopping 2 runs" in interrupted["err"]
    assert interrupted["temp"] == [], "the runs' temp folders are removed"
    assert interrupted["left"] == [], "no process left behind"
    assert interrupted["refs"] and interrupted["status"] == "", "no experiment, no change to the workspace"
    assert interrupted["saved"], "the resume states outlive the runs' clones"


def test_an_interrupted_run_resumes_and_equals_an_uninterrupted_one(resumed_sweep, tmp_path):
    project, interrupted, _ = resumed_sweep
    name, variant = next(iter(interrupted["saved"].items()))
    log = (project.path / f".dvc/tmp/sweep/{name}.log").read_text()
    resumed = re.search(rf"^resuming {variant} after epoch (\d+) from data/resume/{variant}\.pt$", log, re.M)
    assert resumed and 1 <= int(resumed.group(1)) < 6, log[-3000:]
    assert list((project.path / ".dvc/tmp/sweep/resume").iterdir()) == [], "removed once the runs succeeded"
    archived = project.path / "runs" / name / variant
    alone = run_alone(project, tmp_path / "alone", variant, **{"train.epochs": 6,
                                                               "train.seed": int(name.rsplit("seed", 1)[1])})
    assert without_timing(json.loads((archived / "summary.json").read_text())) == alone["summary"]
    assert json.loads((archived / "evaluation.json").read_text()) == alone["evaluation"]


def test_a_run_is_archived_and_committed_as_it_finishes_and_then_done(resumed_sweep):
    project, _, out = resumed_sweep
    assert "committed to runs/epochs6-seed0" in out and "committed to runs/epochs6-seed1" in out
    for name in ("epochs6-seed0", "epochs6-seed1"):
        log = project.run("git", "log", "-1", "--name-only", "--format=%s", "--", f"runs/{name}").stdout.split()
        assert log[:3] == ["Run", f"{name}:", "final"] and all(p.startswith(f"runs/{name}/") for p in log if "/" in p)
    assert project.run("git", "status", "--porcelain").stdout == ""
    again = sweep(project, "-S", "train.epochs=6", "-S", "train.seed=0,1", "--archive", "runs")
    assert again.returncode == 0 and "2 runs, 2 already done, 0 to run" in again.stdout, again.stdout + again.stderr
    assert "done already: runs/epochs6-seed0" in again.stdout  # HEAD moved on: the archive says they are done


@pytest.fixture(scope="module")
def stale_lock_sweep(tmp_path_factory, finished_template, ray_cluster):
    """Two alphas after a commit of new epochs without a run (HEAD's dvc.lock holds the results of the old
    ones): the driver killed (SIGKILL) once the baseline has trained, then the same sweep again. On the
    module's Ray cluster, which outlives the driver and stops its runs."""
    base = tmp_path_factory.mktemp("stale")
    project, temp = copy_project(finished_template, base / "project"), base / "runs"
    temp.mkdir()
    project.set_params(train={"epochs": 3})
    project.commit("3 epochs, not run")
    grid = ["--address", "auto", "-S", "mixup.alpha=0.7,0.8"]
    proc, lines = sweep(project, *grid, tmpdir=temp, start_new_session=True), []
    threading.Thread(target=lambda: [lines.append(line) for line in proc.stdout], daemon=True).start()
    deadline = time.time() + 300
    while not any(line.startswith("  alpha0.7  running  train@mixup") for line in lines):  # the baseline trained
        assert proc.poll() is None and time.time() < deadline, "".join(lines) + proc.stderr.read()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 60  # Ray stops the dead driver's run, whose supervisor removes its clone
    while list(temp.iterdir()) and time.time() < deadline:
        time.sleep(0.2)
    again = sweep(project, *grid, tmpdir=temp)
    assert again.returncode == 0, again.stdout + again.stderr
    return project, "".join(lines), again.stdout


def test_a_stale_lock_has_the_baseline_trained_once(stale_lock_sweep):
    """HEAD's dvc.lock has the baseline of 2 epochs, the runs need one of 3: one run trains it, the other
    waits its turn and restores it."""
    project, first, again = stale_lock_sweep
    assert re.search(r"^  alpha0\.7  running  train@baseline  epoch 3/3 ", first, re.M), first
    assert progress_lines(first, "alpha0.8") == [], "alpha 0.8 would train the same baseline: it waits"
    lines = finished_lines(again)
    assert sorted(lines) == ["alpha0.7", "alpha0.8"], again
    assert ran_in(lines, "train@baseline") == [] and ran_in(lines, "train@mixup") == ["alpha0.7", "alpha0.8"], again
    baselines = [results(project, name)["baseline"] for name in lines]
    assert baselines[0] == baselines[1]
    assert baselines[0]["summary"] != without_timing(json.loads(project.read("metrics/baseline/summary.json")))


def test_a_sweep_started_again_after_its_driver_was_killed_evaluates_the_baseline_once(stale_lock_sweep):
    """The first sweep's run was killed after train@baseline, before evaluate@baseline: in the second, both runs
    would evaluate the same trained baseline, and take turns."""
    _, _, again = stale_lock_sweep
    assert len(ran_in(finished_lines(again), "evaluate@baseline")) == 1, again
