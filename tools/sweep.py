"""A sweep as DVC experiments, run in parallel on Ray: every core or GPU of this machine, or a cluster.

    python -m tools.sweep -S 'mixup.alpha=0.2,0.4,1.0' -S 'train.seed=0,1,2' [--workers N] [--threads N]
                          [--address ADDR] [--remote GIT_REMOTE [--dvc-remote NAME]] [--archive DIR] [--dry]
    make sweep ARGS="-S 'mixup.alpha=0.2,0.4,1.0' -S 'train.seed=0,1,2'"

`-S` takes what `dvc exp run -S` takes (comma lists and range() are crossed; DVC's own parser expands
them). Each combination runs as `dvc exp run -n NAME -S ...` of the current commit (HEAD) in a clone
of its own on a Ray worker (tools/sweep_worker.py), and comes back as an experiment of HEAD: after
the sweep, here, `dvc exp show` lists every run, and `dvc exp apply`, `dvc metrics diff`, `dvc plots
diff` and `python -m tools.report` work on them. A run whose params match an experiment of HEAD
already here (or, with --archive, a run of the archive from the same pipeline code) is skipped, so
starting the same sweep again runs only what is missing.

--archive DIR: each run, as it finishes, is exported to DIR/<name>/ and committed alone (tools/export.py):
a sweep cut off half-way loses nothing. (HEAD moves on; the experiments stay the sweep's commit's.)

Where the data lives:
  one machine (default)  every run clones this repository and uses this workspace's DVC cache, its
                         files linked into the clone (reflink, hardlink or symlink: never a copy), its
                         run-cache shared, so a stage any run computed is restored by the others; the
                         run pushes its experiment's git ref straight into this repository.
  --remote origin        a cluster: runs clone from the git remote, pull what they need from the DVC
                         remote (`dvc exp run --pull --allow-missing`, into a cache shared by the runs
                         on that node) and `dvc exp push --run-cache` their experiment; the sweep pulls
                         each one here as it finishes (`dvc exp pull`). HEAD must be pushed to the git
                         remote; its DVC data and run-cache are pushed for you.
Ray: a local Ray on 127.0.0.1 unless --address or RAY_ADDRESS names a cluster. One GPU per run where
the cluster has GPUs (Ray sets CUDA_VISIBLE_DEVICES); `--threads` cores per run (OMP_NUM_THREADS: the workers its
training and evaluation spread their fixed pieces over; it changes the speed, never the results)
and as many Ray CPUs, so concurrent runs never oversubscribe the cores. Two runs that would compute
the same stage (e.g. the baseline of a seed neither has trained) run one after the other, so the
second restores it from the run-cache: an alpha-only sweep never trains the baseline again.
A failed run is reported with its error and log tail (full logs in .dvc/tmp/sweep/); the others go
on. A run whose worker dies is retried. Ctrl-C stops every run and removes their temp folders. A run
interrupted mid-training resumes after its last complete epoch when it runs again (Ray's retry, the
sweep started again): its clone's data/resume/ is a link to .dvc/tmp/sweep/resume/<name>/ (--remote:
under the node's temp folder), kept until the run succeeds.
"""
import argparse
import copy
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lenet_mixup.params import read_yaml
from lenet_mixup.stage import UserError, run
from tools import export, runs, sweep_worker
from tools.runs import PARAMS_FILE, dvc, flatten, git, last_line

LINK_TYPES = "reflink,hardlink,symlink"  # never copy: no run holds its own copy of the data
LOGS = Path(".dvc/tmp/sweep")
NODE_CACHE = "lenet-mixup-sweep-cache"  # under each node's temp folder, for --remote sweeps
NODE_RESUME = "lenet-mixup-sweep-resume"  # the same, for the runs' resume states


@dataclass
class Run:
    name: str
    overrides: list  # as `dvc exp run -S` takes them, e.g. "mixup.alpha=0.2"
    values: dict  # the same, parsed: {"mixup.alpha": 0.2}
    needs: set = field(default_factory=set)  # (stage, swept values it depends on): see SharedStages


def parse_override(text):
    """(dotted key, value) of one `key=value` as DVC's -S parser (Hydra's) reads it."""
    from dvc.utils.hydra import to_hydra_overrides
    override = to_hydra_overrides([text])[0]
    if override.is_add() or override.is_delete() or override.is_force_add():
        raise UserError(f"-S {text}: only key=value overrides of keys params.yaml has are supported")
    return override.key_or_group, override.value()


def expand(set_params, params):
    """The grid: one list of overrides per combination, in DVC's order (the first -S varies slowest)."""
    from dvc.utils.hydra import get_hydra_sweeps
    overrides = []
    for text in set_params:
        if text.startswith(f"{PARAMS_FILE}:"):
            text = text[len(PARAMS_FILE) + 1:]
        elif re.match(r"^[\w./-]+\.(yaml|yml|json|toml|py):", text):
            raise UserError(f"-S {text}: this project keeps every param in {PARAMS_FILE}")
        overrides.append(text)
    try:
        combinations = [c[PARAMS_FILE] for c in get_hydra_sweeps({PARAMS_FILE: overrides})]
    except Exception as e:  # Hydra's grammar errors: one line is enough
        raise UserError(f"-S: {' '.join(str(e).split())}") from None
    grid = []
    for combination in combinations:
        values = dict(parse_override(text) for text in combination)
        for key in values:
            section, _, name = key.partition(".")
            if not isinstance(params.get(section), dict) or name not in params[section]:
                raise UserError(f"-S {key}: {PARAMS_FILE} has no such key; keys: "
                                + ", ".join(f"{s}.{k}" for s, v in params.items() for k in v))
        grid.append(Run(name="", overrides=combination, values=values))
    return grid


def apply(params, values):
    """params.yaml as the run will have it."""
    params = copy.deepcopy(params)
    for key, value in values.items():
        section, _, name = key.partition(".")
        params[section][name] = value
    return params


def run_name(values):
    """A readable experiment name: `alpha0.2-seed1` (full keys where their last parts would clash)."""
    short = [key.rsplit(".", 1)[-1] for key in values]
    keys = short if len(set(short)) == len(short) else list(values)
    text = "-".join(f"{k}{v}" for k, v in zip(keys, values.values(), strict=True))
    text = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "_", text)).strip("._-")
    return text or "run"


def archived(archive, dvc_yaml):
    """{folder: params} of the archive's runs made by HEAD's pipeline code (dvc.yaml and what its stages
    depend on unchanged since their code commit): runs done."""
    same_code, found = {}, {}
    for result in runs.read_archive(archive) if Path(archive).is_dir() else []:
        commit = result.info.get("code_commit") or "unknown"
        if commit not in same_code:
            same_code[commit] = subprocess.run(["git", "diff", "--quiet", commit, "HEAD", "--", *code_paths(dvc_yaml)],
                                               capture_output=True).returncode == 0
        if same_code[commit]:
            found[f"{archive}/{result.run}"] = result.params
    return found


def plan(grid, head_params, existing):
    """Split the grid into runs to do and runs already done (an experiment, or an archived run, with the
    same params); give each run to do a name no experiment of this commit has."""
    todo, done = [], []
    taken, seen = set(existing), set()
    for r in grid:
        if tuple(r.overrides) in seen:  # the same combination twice in the grid
            continue
        seen.add(tuple(r.overrides))
        expected = apply(head_params, r.values)
        match = next((name for name, params in existing.items() if flatten(params) == flatten(expected)), None)
        if match:
            r.name = match
            done.append(r)
            continue
        base = name = run_name(r.values)
        suffix = 2
        while name in taken:
            name, suffix = f"{base}-{suffix}", suffix + 1
        r.name = name
        taken.add(name)
        todo.append(r)
    return todo, done


class SharedStages:
    """Which runs may run at the same time.

    A stage's result depends on the swept params it or any stage upstream of it reads (dvc.yaml
    `params:`). Two runs with the same values of those params share the stage: if it is not yet
    computed (not in HEAD's dvc.lock with its outputs in `cache`, when the values are HEAD's; not
    finished by an earlier run of this sweep), they run one after the other, and the second
    restores it from DVC's run-cache.
    """

    def __init__(self, dvc_yaml, lock, head_params, swept, cache):
        self.keys = {name: sorted(k for k in swept if runs.depends(k, params))  # the swept keys each stage depends on
                     for name, params in runs.stage_params(dvc_yaml).items()}
        outs = {n: runs.stage_outputs(s) for n, s in runs.pipeline_stages(dvc_yaml).items()}
        uncached = {path for stage_outs in outs.values() for path, cached in stage_outs if not cached}
        # HEAD's stages whose outputs the cache holds: a run restores them instead of running them
        self.locked = {name for name, stage in ((lock or {}).get("stages") or {}).items()
                       if all(out["path"] in uncached or runs.in_cache(cache, out.get("md5"))
                              for out in stage.get("outs") or [])}
        self.head = head_params
        self.done = set()

    def needs(self, run):
        """The (stage, values) pairs this run would compute, unless another run computes them first."""
        needs = set()
        for stage, keys in self.keys.items():
            values = tuple((k, json.dumps(run.values[k])) for k in keys)
            at_head = all(run.values[k] == flatten(self.head).get(k) for k in keys)
            if not (at_head and stage in self.locked):
                needs.add((stage, values))
        return needs

    def may_start(self, run, running):
        busy = set().union(*(r.needs for r in running)) if running else set()
        return not ((run.needs - self.done) & busy)


def code_paths(dvc_yaml):
    """dvc.yaml and what its stages depend on: the same code and params give the same results."""
    return {"dvc.yaml", *(d for s in runs.pipeline_stages(dvc_yaml).values() for d in s.get("deps") or []
                          if isinstance(d, str))}


def check_workspace(commit, dvc_yaml):
    """Refuse uncommitted changes to anything the pipeline reads: the runs would not see them."""
    changed = git("diff", "--name-only", "HEAD").splitlines()
    pipeline = code_paths(dvc_yaml) | {"dvc.lock", PARAMS_FILE, ".dvc/config", ".dvcignore"}
    dirty = [p for p in changed if any(p == q or p.startswith(q.rstrip("/") + "/") for q in pipeline)]
    if dirty:
        raise UserError(f"uncommitted changes to {', '.join(dirty)}: every run is a clone of commit {commit[:7]} "
                        "(HEAD) and would not see them; commit them, or discard them (`git restore "
                        f"{' '.join(dirty)}`, then `dvc checkout`)")
    others = [p for p in changed if p not in dirty]
    if others:
        print(f"note: uncommitted changes to {', '.join(others)} are not part of the pipeline; "
              f"the runs use commit {commit[:7]}", flush=True)


def git_identity():
    """The committer the experiments are made by: this repository's, passed to every clone."""
    found = {}
    for key in ("user.name", "user.email"):
        value = git("config", "--get", key, check=False)
        if value:
            found[key] = value
    return found


def remote_setup(git_remote, dvc_remote, commit):
    """Check HEAD is on the git remote, push its DVC data and run-cache, pull the experiments of HEAD
    that are there already; return (git URL, DVC remote name, DVC remote URL)."""
    url = git("remote", "get-url", git_remote, check=False)
    if not url:
        raise UserError(f"--remote {git_remote}: no such git remote here (`git remote -v` lists them)")
    git("fetch", "-q", git_remote)
    if not git("branch", "-r", "--contains", commit, "--list", f"{git_remote}/*"):
        raise UserError(f"commit {commit[:7]} (HEAD) is not on git remote '{git_remote}', so the workers "
                        f"cannot clone it: push it first (`git push {git_remote} HEAD`)")
    if not dvc_remote:
        dvc_remote = dvc("remote", "default", check=False).stdout.strip()
        if not dvc_remote:
            raise UserError("a sweep with --remote needs a DVC remote every node reaches: set a default one "
                            "(`dvc remote add -d NAME URL`) or pass --dvc-remote NAME")
    dvc_url = dvc("config", f"remote.{dvc_remote}.url", check=False).stdout.strip()
    if not dvc_url:
        raise UserError(f"--dvc-remote {dvc_remote}: no such DVC remote (`dvc remote list` lists them)")
    if "://" not in dvc_url and not os.path.isabs(dvc_url):  # a local path, relative to .dvc/
        dvc_url = str((Path(".dvc") / dvc_url).resolve())
    if "://" not in url and os.path.isdir(url):
        url = str(Path(url).resolve())
    print(f"pushing commit {commit[:7]}'s data and the run-cache to DVC remote '{dvc_remote}'", flush=True)
    dvc("push", "--run-cache", "-q", "-r", dvc_remote)
    dvc("exp", "pull", "-r", dvc_remote, git_remote, "--rev", commit)  # earlier sweeps' runs, to skip
    return url, dvc_remote, dvc_url


@contextmanager
def signals_deferred():
    """Hold Ctrl-C (and SIGTERM) until the block is done: a pull is never left half-way."""
    caught = []
    handlers = {s: signal.signal(s, lambda signum, frame: caught.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
        if caught:
            raise KeyboardInterrupt


def connect(address):
    """Ray: the cluster at `address` (or RAY_ADDRESS), else a local one on 127.0.0.1; returns (ray, started)."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:  # read when ray is imported; with it, Ray 2.60 puts every socket on 127.0.0.1
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        # Token authentication, Ray's default for a new local cluster, said explicitly: Ray then keeps it
        # without printing a warning about it on every sweep.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        ray.init(address=address, **quiet)
        return ray, False
    ray.init(address="local", include_dashboard=False, **quiet)  # a new one, never a `ray start` found here
    return ray, True


def resources(ray, workers, threads, gpus_per_run):
    """(workers, threads, GPUs) per run from what the cluster has; refuse what could never be scheduled."""
    total = ray.cluster_resources()
    cpus, gpus = int(total.get("CPU", 1)), total.get("GPU", 0)
    node_cpus = max(int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"])
    if gpus_per_run is None:
        gpus_per_run = 1 if gpus else 0
    if gpus_per_run and gpus_per_run > gpus:
        raise UserError(f"--gpus-per-run {gpus_per_run}: the Ray cluster has {gpus:g} GPUs")
    workers = workers or (int(gpus / gpus_per_run) if gpus_per_run else cpus)
    threads = threads or max(1, min(node_cpus, cpus // workers))
    if threads > node_cpus:
        raise UserError(f"--threads {threads}: no Ray node has more than {node_cpus} CPUs")
    return workers, threads, gpus_per_run


def describe(run, result):
    """One line per finished run: its params, both variants' peak/final eval accuracy, its seconds."""
    params = " ".join(run.overrides)
    if not result["ok"]:
        return f"{run.name}  FAILED after {result.get('seconds', 0):.0f} s  {params}: {result['error']}"
    accuracy = "  ".join(f"{v} {m['peak_eval_acc']:.4f}/{m['final_eval_acc']:.4f}"
                         for v, m in result["metrics"].items()) or "(no summary.json to read)"
    ran = ", ".join(result["ran"]) or "nothing (all restored)"
    archived = f"; committed to {result['archived']}" if result.get("archived") else ""
    return (f"{run.name}  {params}  peak/final eval acc: {accuracy}  {result['seconds']:.0f} s  "
            f"(ran: {ran}{archived})")


class Sweep:
    def __init__(self, args, todo, shared, spec, ray, threads, gpus_per_run, cache):
        self.args, self.shared, self.spec, self.ray, self.cache = args, shared, spec, ray, cache
        self.todo = list(todo)
        self.total = len(todo)
        self.running = {}  # Ray ObjectRef -> Run
        self.failed, self.finished, self.threads = [], 0, threads
        # by value: a cluster's nodes need Python, git and the requirements, not a copy of this project
        ray.cloudpickle.register_pickle_by_value(sweep_worker)
        self.task = ray.remote(sweep_worker.run_experiment).options(
            num_cpus=threads, num_gpus=gpus_per_run, max_retries=args.retries, retry_exceptions=False)

    def submit_ready(self, workers):
        for r in list(self.todo):
            if len(self.running) >= workers:
                return
            if self.shared.may_start(r, list(self.running.values())):
                self.todo.remove(r)
                spec = {**self.spec, "name": r.name, "overrides": r.overrides, "threads": self.threads,
                        "resume_dir": os.path.join(self.spec["resume_root"], r.name)}
                self.running[self.task.remote(spec)] = r

    def collect(self, ref):
        r = self.running.pop(ref)
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as e:  # the task itself raised: the supervisor broke
            result = {"ok": False, "log": str(e), "error": last_line(str(e))}
        except self.ray.exceptions.RayError as e:  # the worker or its node died, retries spent
            result = {"ok": False, "log": str(e), "error": f"its worker died {self.args.retries + 1} times: "
                                                           f"{last_line(str(e))}"}
        if result["ok"] and self.args.remote:
            try:
                with signals_deferred():
                    dvc("exp", "pull", "-r", self.spec["dvc_remote"], self.args.remote, r.name)
            except UserError as e:
                result.update(ok=False, error=f"ran, but could not be pulled here: {e}")
        ref = f"refs/exps/{self.spec['commit'][:2]}/{self.spec['commit'][2:]}/{r.name}"
        if result["ok"]:  # the experiment is here now: its ref in git, its outputs in the cache
            result["metrics"] = runs.summaries(ref, self.cache)
        if result["ok"] and self.args.archive:
            try:
                with signals_deferred():
                    folder = export.export(r.name, ref, self.args.archive, self.cache, result["host"], self.threads)
                    if folder is not None:
                        export.commit(folder)
                        result["archived"] = folder
            except UserError as e:
                result.update(ok=False, error=f"ran, but could not be archived: {e}")
        LOGS.mkdir(parents=True, exist_ok=True)
        (LOGS / f"{r.name}.log").write_text(result.get("log", ""))
        self.finished += 1
        if result["ok"]:
            self.shared.done |= r.needs
        else:
            self.failed.append(r.name)
        print(f"[{self.finished}/{self.total}] {describe(r, result)}", flush=True)
        if not result["ok"]:
            for line in sweep_worker.log_tail(result.get("log", "")).splitlines():
                print(f"    | {line}")
            print(f"    full log: {LOGS / r.name}.log", flush=True)

    def run(self, workers):
        while self.todo or self.running:
            self.submit_ready(workers)
            ready, _ = self.ray.wait(list(self.running), num_returns=1)
            for ref in ready:
                self.collect(ref)

    def stop(self):
        """Cancel every run in flight: Ray kills their workers, whose supervisors kill their commands and
        remove their temp folders."""
        for ref in self.running:
            self.ray.cancel(ref, force=True)
        deadline = time.time() + 30
        while self.running and time.time() < deadline:
            ready, _ = self.ray.wait(list(self.running), num_returns=len(self.running), timeout=1)
            for ref in ready:
                self.running.pop(ref)


def remove_leftovers(prefix, tmpdir, timeout=20):
    """Wait for the runs' supervisors to remove their temp folders on this machine; remove what remains."""
    pattern = f"{prefix}*"
    root = Path(tmpdir or tempfile.gettempdir())
    deadline = time.time() + timeout
    while list(root.glob(pattern)) and time.time() < deadline:
        time.sleep(0.5)
    for folder in root.glob(pattern):
        shutil.rmtree(folder, ignore_errors=True)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-S", "--set-param", action="append", required=True, dest="set_params",
                        metavar="KEY=VALUES", help="as `dvc exp run -S`: comma lists and range() are crossed")
    parser.add_argument("--workers", type=int, help="runs at a time (default: the cluster's GPUs / --gpus-per-run, "
                                                    "or its CPUs / --threads without GPUs)")
    parser.add_argument("--threads", type=int, help="cores (and Ray CPUs) per run: the speed, never the results "
                                                    "(default: CPUs / workers)")
    parser.add_argument("--gpus-per-run", type=float, help="Ray GPUs per run (default 1 where the cluster has GPUs; "
                                                           "0.5 puts two runs on one GPU)")
    parser.add_argument("--address", help="a Ray cluster (default: RAY_ADDRESS, else a local Ray on 127.0.0.1)")
    parser.add_argument("--remote", metavar="GIT_REMOTE", help="clone from and push to this git remote and the "
                        "DVC remote, for a cluster whose nodes do not share this file system")
    parser.add_argument("--dvc-remote", metavar="NAME", help="with --remote: the DVC remote (default: the default)")
    parser.add_argument("--tmpdir", help="where each node makes the runs' temp clones (default: its temp folder)")
    parser.add_argument("--node-cache", help=f"with --remote: the DVC cache the runs on a node share "
                                             f"(default: <temp folder>/{NODE_CACHE})")
    parser.add_argument("--archive", type=Path, metavar="DIR", help="export each run as it finishes to DIR and "
                        "commit it (tools/export.py); a run DIR holds from the same code counts as done")
    parser.add_argument("--retries", type=int, default=2, help="retries of a run whose worker died (default 2)")
    parser.add_argument("--dry", action="store_true", help="print the plan and stop")
    args = parser.parse_args()
    if args.workers is not None and args.workers < 1 or args.threads is not None and args.threads < 1:
        raise UserError("--workers and --threads must be at least 1")
    return args


def run_spec(args, root, commit, cache):
    """What every run needs to know, and a line saying where its data comes from and goes."""
    node_tmp = args.tmpdir or tempfile.gettempdir()
    spec = {"commit": commit, "git_identity": git_identity(), "link_types": LINK_TYPES, "tmpdir": args.tmpdir,
            "worker_source": Path(sweep_worker.__file__).read_text(),
            "temp_prefix": f"lenet-sweep-{secrets.token_hex(3)}-"}
    if args.remote:
        git_url, dvc_remote, dvc_url = (None, None, None) if args.dry else \
            remote_setup(args.remote, args.dvc_remote, commit)
        node_cache = args.node_cache or os.path.join(node_tmp, NODE_CACHE)
        spec.update(mode="remote", git_source=git_url, dvc_remote=dvc_remote, dvc_remote_url=dvc_url,
                    cache_dir=node_cache, resume_root=os.path.join(node_tmp, NODE_RESUME))
        return spec, f"git remote '{args.remote}' and DVC remote '{dvc_remote}', node cache {node_cache}"
    if args.address or os.environ.get("RAY_ADDRESS"):
        print(f"note: without --remote every Ray node must see {root} (a shared file system)", flush=True)
    spec.update(mode="local", git_source=root, cache_dir=str(cache), resume_root=str(Path(root) / LOGS / "resume"))
    return spec, f"this repository and its DVC cache {cache} ({LINK_TYPES.replace(',', ', ')})"


def execute(args, todo, shared, spec, where, cache):
    """Run the runs to do on Ray; print a line per finished run; stop them all on Ctrl-C."""
    ray, started = connect(args.address)
    sweep = None
    try:
        workers, threads, gpus_per_run = resources(ray, args.workers, args.threads, args.gpus_per_run)
        ray_where = "local Ray on 127.0.0.1" if started else f"Ray at {args.address or os.environ['RAY_ADDRESS']}"
        gpu_text = f", {gpus_per_run:g} GPU each" if gpus_per_run else ""
        print(f"{workers} at a time, {threads} core{'s' * (threads > 1)} each{gpu_text}, on {ray_where}; "
              f"data: {where}", flush=True)
        sweep = Sweep(args, todo, shared, spec, ray, threads, gpus_per_run, cache)
        sweep.run(workers)
    except KeyboardInterrupt:
        in_flight = len(sweep.running) if sweep else 0
        print(f"\ninterrupted: stopping {in_flight} run{'s' * (in_flight != 1)}", file=sys.stderr, flush=True)
        if sweep:
            sweep.stop()
        raise
    finally:
        if started:
            ray.shutdown()
        remove_leftovers(spec["temp_prefix"], args.tmpdir)
    print(f"{sweep.total - len(sweep.failed)} of {sweep.total} runs done"
          + ("; `dvc exp show` lists them" if len(sweep.failed) < sweep.total else ""), flush=True)
    if sweep.failed:
        raise UserError(f"{len(sweep.failed)} run{'s' * (len(sweep.failed) > 1)} failed: {', '.join(sweep.failed)}")


def main():
    args = parse_args()
    root = git("rev-parse", "--show-toplevel", check=False)
    if not root or not (Path(root) / ".dvc").is_dir():
        raise UserError("run the sweep from inside the project's git + DVC repository")
    os.chdir(root)
    commit = git("rev-parse", "HEAD")
    dvc_yaml = read_yaml(git("show", f"{commit}:dvc.yaml"))
    lock_text = git("show", f"{commit}:dvc.lock", check=False)
    head_params = read_yaml(git("show", f"{commit}:{PARAMS_FILE}"))
    check_workspace(commit, dvc_yaml)
    grid = expand(args.set_params, head_params)
    cache = runs.cache_dir()
    spec, where = run_spec(args, root, commit, cache)

    done_already = runs.experiment_params(commit) | (archived(args.archive, dvc_yaml) if args.archive else {})
    todo, done = plan(grid, head_params, done_already)
    shared = SharedStages(dvc_yaml, read_yaml(lock_text) if lock_text else None, head_params,
                          sorted({k for r in grid for k in r.values}), cache)
    for r in todo:
        r.needs = shared.needs(r)
    total = len(todo) + len(done)
    print(f"sweep of commit {commit[:7]}: {total} run{'s' * (total != 1)}, {len(done)} already done, "
          f"{len(todo)} to run", flush=True)
    for r in done:
        print(f"  done already: {r.name}  {' '.join(r.overrides)}")
    if args.dry:
        for r in todo:
            computes = ", ".join(sorted(stage for stage, _ in r.needs)) or "nothing"
            print(f"  to run: {r.name}  {' '.join(r.overrides)}  (computes: {computes})")
    elif todo:
        execute(args, todo, shared, spec, where, cache)


if __name__ == "__main__":
    run(main)
