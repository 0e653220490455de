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
A run's params may list other variants than HEAD's (`-S 'variants=[baseline,mixup,cutmix]'`): its stages
are dvc.yaml's as DVC resolves them for its own params, so it computes that variant's stages, and
shares the others' with the runs without it.
Ray: a local Ray on 127.0.0.1 unless --address or RAY_ADDRESS names a cluster. One GPU per run where
the cluster has GPUs (Ray sets CUDA_VISIBLE_DEVICES); `--threads` cores per run (OMP_NUM_THREADS: the workers its
training and evaluation spread their fixed pieces over; it changes the speed, never the results)
and as many Ray CPUs, so concurrent runs never oversubscribe the cores. Each run's stages to compute
are worked out as DVC will for its params (SharedStages: DVC's run-cache key, against HEAD's dvc.lock
and the run-cache); two runs that would compute the same stage (e.g. the baseline of a seed neither has
trained) run one after the other, so the second restores it from the run-cache: an alpha-only sweep
trains the baseline once at most, whatever HEAD's dvc.lock says and after a sweep killed half-way.
Progress: each run's worker follows its log and reports its stage, epochs (eval accuracy, seconds) and
resumes through a Ray queue (no shared folder needed); on a terminal the sweep redraws a table of the
runs (state, attempt, stage, epoch k/N, eval accuracy, ETA) and the sweep's ETA every few seconds,
elsewhere it prints a line per run at each change of its state or stage and at most every
--progress-every seconds (default 30) between them.
A failed run is reported with its error and log tail (full logs in .dvc/tmp/sweep/); the others go
on. A run whose worker dies is retried. Ctrl-C stops every run and removes their temp folders. A run
interrupted mid-training resumes after its last complete epoch when it runs again (Ray's retry, the
sweep started again): its clone's data/resume/ is a link to .dvc/tmp/sweep/resume/<name>/ (--remote:
under the node's temp folder), kept until the run succeeds.
"""
import argparse
import copy
import graphlib
import heapq
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

from ruamel.yaml import YAMLError

from lenet_mixup.params import VARIANTS, dump_yaml, read_yaml
from lenet_mixup.stage import UserError, run
from tools import export, runs, sweep_worker
from tools.runs import PARAMS_FILE, dvc, flatten, git, last_line

LINK_TYPES = "reflink,hardlink,symlink"  # never copy: no run holds its own copy of the data
LOGS = Path(".dvc/tmp/sweep")
NODE_CACHE = "lenet-mixup-sweep-cache"  # under each node's temp folder, for --remote sweeps
NODE_RESUME = "lenet-mixup-sweep-resume"  # the same, for the runs' resume states
TRAINING = "train@"  # the training stages (dvc.yaml's `train` foreach): the ones whose epochs the ETA counts
EPOCHS = "train.epochs"  # how many epochs each training stage of a run trains
POLL_SECONDS = 1  # how often the driver reads its runs' reports
REDRAW_SECONDS = 2  # how often the table is redrawn on a terminal


@dataclass
class Run:
    name: str
    overrides: list  # as `dvc exp run -S` takes them, e.g. "mixup.alpha=0.2"
    values: dict  # the same, parsed: {"mixup.alpha": 0.2}
    needs: set = field(default_factory=set)  # (stage, key) of the stages it computes: see SharedStages
    epochs: int = 0  # of each training stage


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
            if key not in flatten(params):
                raise UserError(f"-S {key}: {PARAMS_FILE} has no such key; keys: {', '.join(flatten(params))}")
        grid.append(Run(name="", overrides=combination, values=values))
    return grid


def apply(params, values):
    """params.yaml as the run will have it: each dotted key (`mixup.alpha`, `variants`) set."""
    params = copy.deepcopy(params)
    for key, value in values.items():
        *sections, name = key.split(".")
        node = params
        for section in sections:
            node = node[section]
        node[name] = value
    return params


def run_name(values):
    """A readable experiment name: `alpha0.2-seed1` (full keys where their last parts would clash)."""
    short = [key.rsplit(".", 1)[-1] for key in values]
    keys = short if len(set(short)) == len(short) else list(values)
    text = "-".join(f"{k}{v}" for k, v in zip(keys, values.values(), strict=True))
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", text)  # a list's brackets and commas too: variants_baseline_mixup
    text = re.sub(r"_?-_?", "-", re.sub(r"\.{2,}", ".", text)).strip("._-")
    return text or "run"


def archived(archive, dvc_yaml, head_params):
    """{folder: params} of the archive's runs made by HEAD's pipeline code (dvc.yaml and what the stages of
    the run's variants depend on unchanged since its code commit): runs done."""
    results = runs.read_archive(archive) if Path(archive).is_dir() else []
    variants = {}  # {run: its variants}, from its folders: an older run's params list none
    for result in results:
        variants.setdefault(result.run, []).append(result.variant)
    same_code, found = {}, {}
    for result in results:
        commit = result.info.get("code_commit") or "unknown"
        key = (commit, tuple(variants[result.run]))
        if key not in same_code:
            stages = runs.pipeline_stages(dvc_yaml, apply(head_params, {VARIANTS: list(key[1])}))
            same_code[key] = subprocess.run(["git", "diff", "--quiet", commit, "HEAD", "--", *code_paths(stages)],
                                            capture_output=True).returncode == 0
        if same_code[key]:
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
    """What each run will compute, and which runs may run at the same time.

    A run's stages are dvc.yaml's as DVC resolves them for the run's own params. DVC restores a stage
    instead of computing it when it holds a result for the stage's inputs: HEAD's dvc.lock entry, or the
    newest run-cache entry of the stage's run-cache key, with their outputs in the cache. That key is made
    of the stage's command, its params' values in the run's params.yaml, the md5 of each dependency (its
    code as HEAD has it; an upstream stage's outputs as that stage's result records them) and its outputs'
    paths. So a run's stages are walked from upstream: a stage whose dependencies are all known gets DVC's
    own key (`dvc.stage.cache`'s), and is restored if a result has that key; a stage downstream of one to
    compute gets a key of the same entry with its upstream stages' keys for the outputs still to come. Two
    runs that would compute a stage of the same key take turns, and the second restores it: whatever HEAD's
    dvc.lock says, and whatever earlier sweeps left in the run-cache.
    """

    def __init__(self, dvc_yaml, head_params, lock, code, cache, trust_run_cache=False):
        self.dvc_yaml, self.head, self.code, self.cache = dvc_yaml, head_params, code, Path(cache)
        # --remote: the run-cache entries were fetched from the DVC remote, which has their outputs too
        self.trust_run_cache = trust_run_cache
        self.locked = {run_cache_key(entry): outputs(entry) for entry in ((lock or {}).get("stages") or {}).values()}
        self.done = set()  # (stage, key) pairs computed by the runs of this sweep that succeeded

    def needs(self, run):
        """The (stage, key) pairs this run would compute, unless another run computes them first."""
        params = read_yaml(dump_yaml(apply(self.head, run.values)))  # as DVC reads the run's params.yaml
        stages = runs.pipeline_stages(self.dvc_yaml, params)
        upstream = runs.upstream(stages)
        hashes, keys, needs = dict(self.code), {}, set()
        for name in graphlib.TopologicalSorter(upstream).static_order():
            entry, known = stage_entry(stages[name], params, hashes, sorted(keys[u] for u in upstream[name]))
            keys[name] = run_cache_key(entry)
            restored = self.result(keys[name], stages[name]) if known else None
            if restored is None:
                needs.add((name, keys[name]))
            else:
                hashes.update(restored)
        return needs

    def result(self, key, stage):
        """{output: md5} of the result DVC would restore for run-cache key `key`, or None: HEAD's lock entry,
        else the newest entry in the run-cache (as `dvc.stage.cache.StageCache` picks it), each only with the
        outputs the stage caches in the cache."""
        cached = {path for path, in_cache in runs.stage_outputs(stage) if in_cache}
        found = self.locked.get(key)
        if found is not None and all(runs.in_cache(self.cache, found.get(p)) for p in cached):
            return found
        folder = self.cache / "runs" / key[:2] / key
        try:
            entries = sorted(folder.iterdir(), key=lambda f: f.stat().st_mtime) if folder.is_dir() else []
            found = outputs(read_yaml(entries[-1].read_text())) if entries else None
        except (OSError, ValueError, YAMLError):  # being written, or broken: DVC would not restore it either
            found = None
        if found is not None and (self.trust_run_cache or all(runs.in_cache(self.cache, found.get(p)) for p in cached)):
            return found
        return None

    def may_start(self, run, running):
        busy = set().union(*(r.needs for r in running)) if running else set()
        return not ((run.needs - self.done) & busy)


def stage_entry(stage, params, hashes, upstream_keys):
    """(the entry of a resolved stage that DVC's run-cache key is made of, whether every dependency's md5 is
    known). As `dvc.stage.serialize.to_single_stage_lockfile` writes it for a run of these params, less what
    the key leaves out (sizes, file counts, outputs' hashes); a dependency of unknown md5 (an upstream stage's
    output still to be computed) is left without one, and the upstream stages' keys stand for it."""
    deps = [{"path": path, "hash": "md5", "md5": hashes[path]} if path in hashes else {"path": path}
            for path in sorted(runs.deps(stage))]
    known = all("md5" in dep for dep in deps)
    values = {}
    for entry in stage.get("params") or []:
        if isinstance(entry, dict):  # another params file: this project keeps every param in params.yaml
            known = False
            values.update({f"{file}:{k}": None for file, keys in entry.items() for k in keys or []})
        else:
            values[entry] = param_value(params, entry)
    entry = {"cmd": stage["cmd"]}
    if deps:
        entry["deps"] = deps
    if values:
        entry["params"] = {PARAMS_FILE: dict(sorted(values.items()))}
    outs = sorted(path for path, _ in runs.stage_outputs(stage))
    if outs:
        entry["outs"] = [{"path": path} for path in outs]
    if not known:
        entry["upstream"] = upstream_keys
    # DVC keeps no run-cache entry for a stage without dependencies or outputs: never restored from it
    return entry, known and bool(deps) and bool(outs)


def run_cache_key(entry):
    """DVC's run-cache key of a stage's lock entry (dvc.lock's, a run-cache entry's, stage_entry's)."""
    from dvc.stage.cache import _get_cache_hash
    return _get_cache_hash(copy.deepcopy(entry), key=True)


def outputs(entry):
    """{path: md5} of a lock entry's outputs."""
    return {out["path"]: out.get("md5") for out in entry.get("outs") or []}


def param_value(params, key):
    """The value of a dotted key (`train.device`) or a section (`train`) in params, as DVC records it."""
    node = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def code_paths(*stages):
    """dvc.yaml and what its stages (resolved: runs.pipeline_stages) depend on: the same code and params
    give the same results."""
    return {"dvc.yaml", *(d for resolved in stages for s in resolved.values() for d in s.get("deps") or []
                          if isinstance(d, str))}


def inside_folder_deps(stages, lock):
    """The outputs in HEAD's dvc.lock that lie in a folder another stage depends on (compare's metrics/).
    `dvc exp run --pull` pulls a dependency only when the whole of it is missing, never the missing files
    of such a folder: a run on a node whose cache lacks some (HEAD's baseline results) pulls these first."""
    locked = {out["path"] for stage in ((lock or {}).get("stages") or {}).values() for out in stage.get("outs") or []
              if out.get("md5")}
    deps = {d for s in stages.values() for d in s.get("deps") or [] if isinstance(d, str)}
    return sorted(out for out in locked if any(out != dep and runs.inside(out, dep) for dep in deps))


def check_workspace(commit, stages):
    """Refuse uncommitted changes to anything the pipeline reads (`stages`: the runs' resolved stages):
    the runs would not see them."""
    changed = git("diff", "--name-only", "HEAD").splitlines()
    pipeline = code_paths(*stages) | {"dvc.lock", PARAMS_FILE, ".dvc/config", ".dvcignore"}
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
    # the run-cache entries there (earlier sweeps' runs pushed theirs), so the plan knows what they restore
    dvc("fetch", "--run-cache", "--type", "metrics", "-q", "-r", dvc_remote)
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


def training(needs):
    """The (stage, key) pairs of the training stages among a run's needs."""
    return [(stage, key) for stage, key in needs if stage.startswith(TRAINING)]


def describe(run, result):
    """One line per finished run: its params, each variant's peak/final eval accuracy, its seconds."""
    params = " ".join(run.overrides)
    if not result["ok"]:
        return f"{run.name}  FAILED after {result.get('seconds', 0):.0f} s  {params}: {result['error']}"
    accuracy = "  ".join(f"{v} {m['peak_eval_acc']:.4f}/{m['final_eval_acc']:.4f}"
                         for v, m in result["metrics"].items()) or "(no summary.json to read)"
    ran = ", ".join(result["ran"]) or "nothing (all restored)"
    archived = f"; committed to {result['archived']}" if result.get("archived") else ""
    return (f"{run.name}  {params}  peak/final eval acc: {accuracy}  {result['seconds']:.0f} s  "
            f"(ran: {ran}{archived})")


def run_eta(epochs_left, seconds_per_epoch, into_epoch=0.0):
    """Seconds until a run has trained its last epoch: `epochs_left` epochs (those of the stage it trains now
    and of the training stages it has still to run) at `seconds_per_epoch`, less what the epoch under way
    has run so far, at most an epoch (a slow epoch holds the ETA, never raises it). None: no epoch timed yet."""
    if epochs_left <= 0:
        return 0.0
    if seconds_per_epoch is None:
        return None
    return epochs_left * seconds_per_epoch - min(into_epoch, seconds_per_epoch)


def queued_etas(running, queued, workers):
    """Seconds until each queued run is done: the runs in flight end after their ETAs (`running`), and each
    queued run (its seconds, `queued`, in the order they start) starts on the first of `workers` to be free.
    All None when an ETA or a duration is unknown."""
    if None in running or None in queued:
        return [None] * len(queued)
    free = sorted(running) + [0.0] * (workers - len(running))
    heapq.heapify(free)
    ends = []
    for seconds in queued:
        ends.append(heapq.heappop(free) + seconds)
        heapq.heappush(free, ends[-1])
    return ends


def sweep_eta(running, queued, workers):
    """Seconds until the last run is done (queued_etas' arguments), or None."""
    ends = [*running, *queued_etas(running, queued, workers)]
    return None if None in ends else max(ends, default=0.0)


def duration(seconds):
    if seconds is None:
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@dataclass
class Progress:
    """What the driver knows of one run as it goes, from its worker's reports."""
    name: str
    training: list  # the (stage, key) pairs of the training stages it will compute (SharedStages.needs)
    epochs: int  # each training stage's, from its params
    state: str = "queued"  # running, done, failed
    attempt: int = 0  # Ray's tries of it so far: a retry follows a worker that died
    stage: str = ""  # the stage DVC runs now
    epoch: int = 0  # the epochs done of that stage, if it trains
    eval_acc: float | None = None  # after its last epoch
    resumed: int | None = None  # the epoch this try's training stage resumed after
    seconds: list = field(default_factory=list)  # each epoch's seconds, as the training stages print them
    passed: set = field(default_factory=set)  # the stages it has run
    since: float = 0.0  # when its last epoch ended, or its stage began
    printed: float = float("-inf")  # when a line last showed it (off a terminal)

    def epochs_left(self):
        """Those of the stage it trains now, and of the training stages it has still to run."""
        ahead = [stage for stage, _ in self.training if stage not in self.passed and stage != self.stage]
        return (self.epochs - self.epoch if self.stage.startswith(TRAINING) else 0) + self.epochs * len(ahead)

    def attempt_text(self):
        return f"attempt {self.attempt}" + (f", resumed after epoch {self.resumed}" if self.resumed is not None else "")


class Board:
    """Every run's progress as its worker reports it, the runs' ETAs and the sweep's; shown on a terminal as a
    table redrawn every few seconds, elsewhere as a line per run at most every `every` seconds and at every
    change of its state, try or stage."""

    def __init__(self, workers, every, tty, clock=time.monotonic, out=sys.stdout):
        self.workers, self.every, self.tty, self.clock, self.out = workers, every, tty, clock, out
        self.runs = {}  # name -> Progress, in the order the runs are queued
        self.drawn, self.redrawn = 0, float("-inf")  # the table's lines on the terminal, and when

    def add(self, name, training, epochs):
        self.runs[name] = Progress(name, sorted(training), epochs)

    def plan(self, name, training):
        """What a run will compute, as known when it is submitted."""
        self.runs[name].training = sorted(training)

    def report(self, event):
        """One report of a run's worker: {"state": "running"} as a try starts, else sweep_worker.progress_event's."""
        p, now = self.runs.get(event.get("name")), self.clock()
        if p is None or p.state in ("done", "failed"):
            return
        changed = True
        if event.get("state") == "running":
            p.state, p.attempt, p.stage, p.epoch, p.eval_acc, p.resumed = "running", p.attempt + 1, "", 0, None, None
            p.passed = set()
        elif "stage" in event:
            p.passed.add(p.stage)
            p.stage, p.epoch, p.eval_acc, p.since = event["stage"], 0, None, now
        elif "resumed" in event:
            p.epoch = p.resumed = event["resumed"]
            p.since = now
        elif "epoch" in event:
            p.epoch, p.epochs, p.eval_acc = event["epoch"], event["epochs"], event["eval_acc"]
            p.seconds.append(event["seconds"])
            p.since, changed = now, False
        else:
            return
        if not self.tty and (changed or now - p.printed >= self.every):
            p.printed = now
            print(self.line(p, now), file=self.out, flush=True)

    def finish(self, name, ok):
        p = self.runs[name]
        p.state = "done" if ok else "failed"
        if ok:  # a failed run keeps the stage it failed in
            p.stage, p.epoch, p.eval_acc = "", 0, None

    def seconds_per_epoch(self, p=None):
        """The mean of the epochs seen: the run's own, else every run's."""
        seen = (p.seconds if p else []) or [s for q in self.runs.values() for s in q.seconds]
        return sum(seen) / len(seen) if seen else None

    def etas(self, now):
        """{run: seconds until it is done} and the sweep's: the runs in flight's ETAs, then the queued runs'
        epochs at the mean seconds per epoch (less the training stages a run ahead of them computes, which
        they restore), on the free workers."""
        running = [p for p in self.runs.values() if p.state == "running"]
        queued = [p for p in self.runs.values() if p.state == "queued"]
        etas = {p.name: run_eta(p.epochs_left(), self.seconds_per_epoch(p),
                                now - p.since if p.stage.startswith(TRAINING) else 0.0) for p in running}
        claimed, durations = {pair for p in running for pair in p.training}, []
        for p in queued:
            durations.append(run_eta(len(set(p.training) - claimed) * p.epochs, self.seconds_per_epoch()))
            claimed.update(p.training)
        etas.update(zip((p.name for p in queued), queued_etas(list(etas.values()), durations, self.workers),
                        strict=True))
        return etas, sweep_eta([etas[p.name] for p in running], durations, self.workers)

    def line(self, p, now):
        """`  NAME  running  [attempt 2, resumed after epoch 1]  STAGE  epoch k/N  eval acc A  ETA T  (sweep ETA T)`"""
        etas, sweep = self.etas(now)
        parts = [p.name, p.state] + ([p.attempt_text()] if p.attempt > 1 or p.resumed is not None else [])
        parts += [p.stage] if p.stage else []
        parts += [f"epoch {p.epoch}/{p.epochs}"] if p.epoch else []
        parts += [f"eval acc {p.eval_acc:.4f}"] if p.eval_acc is not None else []
        return f"  {'  '.join(parts)}  ETA {duration(etas[p.name])}  (sweep ETA {duration(sweep)})"

    def table(self, now, rows):
        """The terminal's table: a row per run (the running and failed ones first when not all fit in `rows`),
        then the sweep's counts and ETA."""
        etas, sweep = self.etas(now)
        shown = list(self.runs.values())
        if len(shown) > rows:
            shown = sorted(shown, key=lambda p: ("running", "failed", "queued", "done").index(p.state))[:rows]
        cells = [("run", "state", "attempt", "stage", "epoch", "eval acc", "ETA")]
        for p in shown:
            attempt = p.attempt_text().removeprefix("attempt ") if p.attempt else "-"
            cells.append((p.name, p.state, attempt, p.stage or "-", f"{p.epoch}/{p.epochs}" if p.epoch else "-",
                          "-" if p.eval_acc is None else f"{p.eval_acc:.4f}",
                          duration(etas[p.name]) if p.name in etas else "-"))
        widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
        counts = ", ".join(f"{sum(p.state == state for p in self.runs.values())} {state}"
                           for state in ("running", "queued", "done", "failed"))
        more = len(self.runs) - len(shown)
        lines.append(f"{f'... {more} more; ' if more else ''}sweep: {counts}; ETA {duration(sweep)}")
        return lines

    def tick(self):
        """On a terminal, redraw the table when it is due."""
        now = self.clock()
        if not self.tty or now - self.redrawn < REDRAW_SECONDS:
            return
        size = shutil.get_terminal_size()
        lines = [line[:size.columns - 1] for line in self.table(now, max(3, size.lines - 4))]
        self.clear()
        print("\n".join(lines), file=self.out, flush=True)
        self.drawn, self.redrawn = len(lines), now

    def clear(self):
        """Take the table off the terminal (before a line that stays): it is drawn again below it."""
        if self.drawn:
            print(f"\x1b[{self.drawn}F\x1b[J", end="", file=self.out, flush=True)
            self.drawn, self.redrawn = 0, float("-inf")


class Sweep:
    def __init__(self, args, todo, shared, spec, ray, workers, threads, gpus_per_run, cache):
        from ray.util.queue import Queue
        self.args, self.shared, self.spec, self.ray, self.cache = args, shared, spec, ray, cache
        self.todo, self.workers = list(todo), workers
        self.total = len(todo)
        self.running = {}  # Ray ObjectRef -> Run
        self.failed, self.finished, self.threads = [], 0, threads
        # The runs' progress comes through Ray, from whichever node runs them: no shared folder needed. The
        # queue's actor holds no CPU, so it never keeps a run from starting.
        self.progress = Queue(actor_options={"num_cpus": 0})
        self.board = Board(workers, args.progress_every, sys.stdout.isatty())
        for r in todo:
            self.board.add(r.name, training(r.needs), r.epochs)
        # by value: a cluster's nodes need Python, git and the requirements, not a copy of this project
        ray.cloudpickle.register_pickle_by_value(sweep_worker)
        self.task = ray.remote(sweep_worker.run_experiment).options(
            num_cpus=threads, num_gpus=gpus_per_run, max_retries=args.retries, retry_exceptions=False)

    def submit_ready(self):
        for r in list(self.todo):
            if len(self.running) >= self.workers:
                return
            if self.shared.may_start(r, list(self.running.values())):
                self.todo.remove(r)
                # what it computes now: the run-cache may hold more than when the sweep was planned
                self.board.plan(r.name, training(self.shared.needs(r) - self.shared.done))
                spec = {**self.spec, "name": r.name, "overrides": r.overrides, "threads": self.threads,
                        "resume_dir": os.path.join(self.spec["resume_root"], r.name), "progress": self.progress}
                self.running[self.task.remote(spec)] = r

    def read_progress(self):
        try:
            waiting = self.progress.qsize()
            events = self.progress.get_nowait_batch(waiting) if waiting else []
        except self.ray.exceptions.RayError:  # the queue's actor is gone: the runs go on, unreported
            return
        for event in events:
            self.board.report(event)

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
        self.board.finish(r.name, result["ok"])
        self.board.clear()
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

    def run(self):
        while self.todo or self.running:
            self.submit_ready()
            ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=POLL_SECONDS)
            self.read_progress()  # first: a finished run's last reports are in the queue before its result
            for ref in ready:
                self.collect(ref)
            self.board.tick()
        self.board.clear()

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
    parser.add_argument("--progress-every", type=float, default=30, metavar="SECONDS",
                        help="off a terminal: a run's progress line at most this often, besides one at each change "
                             "of its state or stage (default 30; 0: every epoch)")
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
        sweep = Sweep(args, todo, shared, spec, ray, workers, threads, gpus_per_run, cache)
        sweep.run()
    except KeyboardInterrupt:
        in_flight = len(sweep.running) if sweep else 0
        if sweep:
            sweep.board.clear()
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
    grid = expand(args.set_params, head_params)
    # every run's own stages: a variant a run adds brings its module into what must be committed
    check_workspace(commit, [runs.pipeline_stages(dvc_yaml, apply(head_params, values))
                             for values in [{}, *(r.values for r in grid)]])
    cache = runs.cache_dir()
    spec, where = run_spec(args, root, commit, cache)

    done_already = runs.experiment_params(commit) | (archived(args.archive, dvc_yaml, head_params)
                                                     if args.archive else {})
    todo, done = plan(grid, head_params, done_already)
    lock = read_yaml(lock_text) if lock_text else None
    spec["pull_first"] = inside_folder_deps(runs.pipeline_stages(dvc_yaml, head_params), lock)
    stages = [runs.pipeline_stages(dvc_yaml, apply(head_params, r.values)) for r in todo]
    shared = SharedStages(dvc_yaml, head_params, lock, runs.git_md5s(commit, code_paths(*stages)), cache,
                          trust_run_cache=bool(args.remote))
    for r in todo:
        r.needs = shared.needs(r)
        r.epochs = param_value(apply(head_params, r.values), EPOCHS)
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
