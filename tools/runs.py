"""The one run reader: the results of sweeps and studies, from DVC's experiments or from an archive.

A result is one variant's metrics from one run, with the params that run had. Two sources:
- experiments: `dvc exp show --json` (or a saved copy). Every experiment holds the results of the
  variants its params listed (metrics/<variant>/summary.json and evaluation.json). The baseline
  commit's rows (HEAD) are kept apart: the report counts them only where they are a point of the
  experiments' grid.
- an archive folder (`python -m tools.export`, `python -m tools.sweep --archive`, study/runs/):
      <archive>/<run>/params.yaml     the run's params, as it had them
      <archive>/<run>/run.json        how it ran, as far as it was known: code_commit, host, threads, ...
      <archive>/<run>/<variant>/      that variant's metrics files, as metrics/<variant>/ held them
                                      (summary.json, evaluation.json, epochs.tsv, fgsm.tsv, reliability.tsv)
A run's variants are read from these paths (metrics/<variant>/, <run>/<variant>/), never from a list of
names: a run of a variant added since, or of one since removed, reads as any other.
Also here, because the sweep, the export and the report all need them: git and DVC commands, a file
as an experiment holds it, and which params each variant's results depend on (dvc.yaml's stages as DVC
resolves them for a run's params: its `foreach` stages make one stage per listed variant).
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

from ruamel.yaml import YAMLError

from lenet_mixup import paths
from lenet_mixup.params import dump_yaml, read_yaml
from lenet_mixup.stage import UserError

PARAMS_FILE = "params.yaml"
READ = ("summary", "evaluation")  # the JSON metrics files of a variant that a result holds
ARCHIVED = ("summary.json", "evaluation.json", "epochs.tsv", "fgsm.tsv", "reliability.tsv")


@dataclass
class Result:
    run: str  # the experiment's name, or the run's folder in the archive
    variant: str
    params: dict  # flat: {"mixup.alpha": 1.0, "train.seed": 0, ...}
    files: dict  # {"summary": summary.json, "evaluation": evaluation.json}
    info: dict = field(default_factory=dict)  # run.json; for an experiment, its code commit
    folder: Path | None = None  # <archive>/<run>/<variant>/


def variant_of(path, name=None):
    """The variant whose results `path` is one of (metrics/<variant>/..., or exactly
    metrics/<variant>/<name>), else None."""
    parts = PurePosixPath(path).parts
    if len(parts) < 3 or parts[0] != paths.METRICS.as_posix() or name and parts[2:] != (name,):
        return None
    return parts[1]


def flatten(params, prefix=""):
    flat = {}
    for key, value in params.items():
        flat.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


# ---------------------------------------------------------------- experiments

def shown_experiments(saved=None):
    """`dvc exp show --json` output: read from `saved`, else run here."""
    try:
        shown = json.loads(Path(saved).read_text() if saved else dvc("exp", "show", "--json").stdout)
    except (OSError, ValueError) as e:
        raise UserError(f"{saved}: not a saved `dvc exp show --json` output ({e})") from None
    if not isinstance(shown, list):
        raise UserError(f"{saved or 'dvc exp show --json'}: not a list of rows, as `dvc exp show --json` writes")
    return shown


def read_experiments(shown):
    """(the experiments' results, the baseline commits' results) in `dvc exp show --json` output. The
    workspace row is left out, and so is a variant whose metrics an experiment lacks (queued, failed)."""
    experiments, heads = [], []
    for row in shown:
        if row.get("rev") == "workspace":
            continue
        heads += row_results(row, row["rev"])
        for experiment in row.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                experiments += row_results(rev, row["rev"])
    return experiments, heads


def row_results(row, commit):
    data = row.get("data") or {}
    params = ((data.get("params") or {}).get(PARAMS_FILE) or {}).get("data")
    metrics = data.get("metrics") or {}
    if row.get("error") or not isinstance(params, dict):
        return []
    found = []
    for variant in [v for path in metrics if (v := variant_of(path, "summary.json"))]:
        files = {name: (metrics.get(f"{paths.METRICS}/{variant}/{name}.json") or {}).get("data") for name in READ}
        if all(isinstance(f, dict) for f in files.values()):
            found.append(Result(row.get("name") or row["rev"][:7], variant, flatten(params), files,
                                {"code_commit": commit}))
    return found


def experiment_refs(commit):
    """{name: ref} of every experiment of `commit` in this repository."""
    prefix = f"refs/exps/{commit[:2]}/{commit[2:]}/"
    return {ref[len(prefix):]: ref for ref in git("for-each-ref", "--format=%(refname)", prefix).splitlines()}


def experiment_params(commit):
    """{name: params} of every experiment of `commit` in this repository."""
    found = {}
    for name, ref in experiment_refs(commit).items():
        shown = subprocess.run(["git", "show", f"{ref}:{PARAMS_FILE}"], capture_output=True, text=True)
        if shown.returncode == 0:
            found[name] = read_yaml(shown.stdout)
    return found


def locked_variants(commit):
    """The variants whose results experiment `commit` holds: those of the metrics/<variant>/summary.json
    among its dvc.lock's outputs, in the lock's order."""
    lock = read_yaml(git("show", f"{commit}:dvc.lock", check=False) or "{}") or {}
    return [v for stage in (lock.get("stages") or {}).values() for out in stage.get("outs") or []
            if (v := variant_of(out.get("path", ""), "summary.json"))]


def summaries(commit, cache):
    """{variant: summary.json} of an experiment, for the variants whose summary can be read."""
    found = {}
    for variant in locked_variants(commit):
        text = read_output(commit, str(paths.summary_json(variant)), cache)
        if text:
            found[variant] = json.loads(text)
    return found


def read_output(commit, path, cache):
    """A file as commit `commit` (an experiment's) holds it: from git if git tracks it, else from DVC's
    cache, found by its md5 in the commit's dvc.lock. None if neither has it."""
    shown = subprocess.run(["git", "show", f"{commit}:{path}"], capture_output=True, text=True)
    if shown.returncode == 0:
        return shown.stdout
    lock = read_yaml(git("show", f"{commit}:dvc.lock", check=False) or "{}") or {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if out.get("path") == path and in_cache(cache, out.get("md5")):
                return cache_file(cache, out["md5"]).read_text()
    return None


def cache_dir():
    """This repository's DVC cache, an absolute path."""
    return Path(dvc("cache", "dir").stdout.strip()).resolve()


def cache_file(cache, md5):
    """Where DVC's cache (3.x layout) keeps the object `md5` (a folder's ends with .dir)."""
    return Path(cache) / "files" / "md5" / md5[:2] / md5[2:]


def in_cache(cache, md5):
    return bool(md5) and cache_file(cache, md5).is_file()


def captured(args, **kwargs):
    """subprocess.run, its output captured in files, not pipes: a daemon a command leaves running (the
    workers `dvc queue start` and `dvc exp run --run-all` spawn) inherits them, and with pipes the call
    would wait for that daemon to exit (a queue worker idles 10 s after its last run, and one that misses
    its shutdown never exits)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        returncode = subprocess.run(args, stdout=out, stderr=err, text=True, **kwargs).returncode
        out.seek(0), err.seek(0)
        return subprocess.CompletedProcess(args, returncode, out.read(), err.read())


def git(*args, cwd=None, check=True):
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise UserError(f"`git {' '.join(args)}` failed: {last_line(result.stderr)}")
    return result.stdout.strip()


def dvc(*args, cwd=None, check=True):
    """A DVC command in this interpreter's environment; its output captured, Ctrl-C kept from it."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, start_new_session=True)
    if check and result.returncode != 0:
        raise UserError(f"`dvc {' '.join(args)}` failed: {last_line(result.stderr or result.stdout)}")
    return result


def git_md5s(commit, files):
    """{path: md5 of its content} of the `files` that are files in `commit`: the hash DVC 3 records for a
    file dependency (`hash: md5`). One `git cat-file --batch` for them all."""
    files = sorted(files)
    batch = subprocess.run(["git", "cat-file", "--batch"], input="".join(f"{commit}:{f}\n" for f in files).encode(),
                           capture_output=True, check=True).stdout
    found, at = {}, 0
    for path in files:
        header_end = batch.index(b"\n", at)
        header = batch[at:header_end].split()
        at = header_end + 1
        if header[-1] == b"missing":
            continue
        size = int(header[2])
        if header[1] == b"blob":
            found[path] = hashlib.md5(batch[at:at + size]).hexdigest()
        at += size + 1
    return found


def last_line(text):
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


# ---------------------------------------------------------------- an archive

def read_archive(archive):
    """Every result in an archive folder; a run folder that is not a finished run is one error naming it.
    Folders whose name starts with '.' are runs being written. A run's variants are its subfolders that
    hold its metrics files (one that lacks summary.json is a run half-written: an error)."""
    archive = Path(archive)
    if not archive.is_dir():
        raise UserError(f"no archive folder {archive}")
    found = []
    for run in sorted(p for p in archive.iterdir() if p.is_dir() and not p.name.startswith(".")):
        params, info = read_file(run / PARAMS_FILE, read_yaml), read_file(run / "run.json", json.loads)
        variants = [p for p in sorted(run.iterdir()) if p.is_dir() and any((p / f).is_file() for f in ARCHIVED)]
        if not variants:
            raise UserError(f"{run}: no variant folder (<variant>/summary.json): not an archived run")
        for folder in variants:
            files = {name: read_file(folder / f"{name}.json", json.loads) for name in READ}
            found.append(Result(run.name, folder.name, flatten(params), files, info, folder))
    return found


def read_file(path, parse):
    try:
        data = parse(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path.parent}: no {path.name}: not a finished run (remove the folder, or export "
                        "the run again)") from None
    except (ValueError, YAMLError) as e:
        raise UserError(f"{path}: unreadable ({last_line(str(e))})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a mapping")
    return data


# ---------------------------------------------------------------- what results depend on

def pipeline_stages(dvc_yaml, params):
    """{stage: its definition} of dvc.yaml as DVC resolves it for `params` (a run's params.yaml): each
    `foreach` stage becomes one stage per item (`train@mixup`, ...), its `${item}` filled in. DVC's own
    resolver, on a params.yaml held in memory: no repository, no files read."""
    from dvc.fs import MemoryFileSystem
    from dvc.parsing import DataResolver, ResolveError
    fs = MemoryFileSystem(global_store=False)
    fs.pipe({PARAMS_FILE: dump_yaml(params).encode()})
    try:
        stages = DataResolver(SimpleNamespace(fs=fs, config={}), "", dvc_yaml).resolve()["stages"]
    except ResolveError as e:
        raise UserError(f"dvc.yaml with these params: {' '.join(str(e).split())}") from None
    return {n: s for n, s in stages.items() if isinstance(s, dict) and "cmd" in s}


def stage_outputs(stage):
    """[(path, cached by DVC)] of a dvc.yaml stage's outs, metrics and plots."""
    found = []
    for kind in ("outs", "metrics", "plots"):
        for entry in stage.get(kind) or []:
            path, options = next(iter(entry.items())) if isinstance(entry, dict) else (entry, None)
            found.append((path, (options or {}).get("cache", True) is not False))
    return found


def inside(path, folder):
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def upstream(stages):
    """{stage: the stages it depends on directly}, of resolved stages (pipeline_stages). A stage is upstream
    of another when an output of it is, holds or lies in a dependency of the other (compare depends on the
    whole metrics/ folder, the variants' outputs in it)."""
    outs = {n: [path for path, _ in stage_outputs(s)] for n, s in stages.items()}
    return {n: {m for m in stages for dep in deps(s) for out in outs[m]
                if m != n and (inside(dep, out) or inside(out, dep))}
            for n, s in stages.items()}


def deps(stage):
    """The paths a resolved stage depends on."""
    return [d for d in stage.get("deps") or [] if isinstance(d, str)]


def stage_params(stages):
    """{stage: the params it reads, itself or through a stage upstream of it}, of resolved stages
    (pipeline_stages)."""
    upstream_of = upstream(stages)
    reads = {n: {p for entry in s.get("params") or [] for p in param_keys(entry)} for n, s in stages.items()}
    found = {}
    for name in stages:
        seen, stack = set(), [name]
        while stack:
            stage = stack.pop()
            if stage not in seen:
                seen.add(stage)
                stack.extend(upstream_of[stage])
        found[name] = set().union(*(reads[s] for s in seen))
    return found


def variant_params(stages):
    """{variant: the params its results depend on}: those of the stages that write metrics/<variant>/,
    for every variant some stage of `stages` (resolved: pipeline_stages) writes results of."""
    params, found = stage_params(stages), {}
    for name, stage in stages.items():
        for path, _ in stage_outputs(stage):
            if variant := variant_of(path):
                found.setdefault(variant, set()).update(params[name])
    return found


def param_keys(entry):
    if isinstance(entry, dict):  # {params-file: [keys]}
        return [k for keys in entry.values() for k in (keys or [])]
    return [entry]


def depends(key, params):
    """Whether the dotted key is one of `params`, inside one (train.seed in train), or holds one."""
    return any(key == p or key.startswith(p + ".") or p.startswith(key + ".") for p in params)
