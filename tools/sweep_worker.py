"""One run of a sweep, on whichever node Ray gives it: clone, `dvc exp run`, send the experiment back.

tools/sweep.py (the driver) submits `run_experiment` as a Ray task. The task starts a supervisor
process (this file's text, run with `python -c`, so a node needs only Python, git, DVC and the
project's requirements, not a checkout of the project) that:

1. clones the project's git repository at the sweep's commit into a temp folder of its own;
2. points DVC at a cache shared by every run on the node (`cache.dir`, files linked into the clone,
   never copied): on one machine the workspace's own cache, across machines a node cache fed from
   the DVC remote (`dvc fetch --run-cache` first, so a stage any earlier run pushed is restored, and
   `dvc pull` of HEAD's outputs that lie in a folder a stage depends on, which `--pull` would miss);
3. links data/resume, where the training stages keep their per-epoch resume state, to the run's
   resume folder outside the clone, so that the run resumes if it runs again after an interruption;
4. runs `dvc exp run -n NAME -S ...` there, torch limited to the task's threads, its output into a log
   that a thread follows: each stage DVC runs, each epoch a training stage ends and the epoch a resumed
   one picks up after go to the Ray task as PROGRESS lines, and from it to the driver's queue;
5. sends the experiment back: on one machine `git push` of its ref into the workspace (its outputs
   are already in the shared cache); across machines `dvc exp push --run-cache` to the git and DVC
   remotes, from which the driver pulls it;
6. removes the temp folder, whatever happened, and the resume folder when the run succeeded or left
   nothing in it.

The supervisor watches the Ray worker that started it: when Ray kills the worker (Ctrl-C, a
cancelled task) or the worker dies, the supervisor kills the commands it started and removes its
folder, and Ray retries the task from scratch. It is not the worker's child (it forks away at once):
Ray kills a dead worker's children outright, which would leave no one to clean up. Only the standard
library is used here: Ray ships this module by value to nodes that have no copy of it. (The Ray task
reports through the queue the driver passes it, a `ray.util.queue.Queue`: through Ray, so nodes need
share no file system with the driver, and by its methods alone, so this module imports no Ray.)
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

RESULT_MARK = "SWEEP-RESULT "
PROGRESS_MARK = "SWEEP-PROGRESS "
LOG_TAIL_LINES = 15
FOLLOW_SECONDS = 0.5  # how often the supervisor reads what its log has gained
# The lines of a run's log the driver shows: DVC starting a stage, a training stage's line per epoch
# (lenet_mixup/training.py), and its line when it resumes from a saved state.
STAGE_LINE = re.compile(r"^Running stage '([^']+)'")
EPOCH_LINE = re.compile(r"^\S+ epoch (\d+)/(\d+)(?: \(mixed\))?: .*eval acc ([\d.]+), .* ([\d.]+) s$")
RESUMED_LINE = re.compile(r"^resuming \S+ after epoch (\d+) from ")


def run_experiment(spec):
    """Ray task: run one experiment in a supervisor process; return its result (a dict).

    A failed run (a stage exits non-zero) is a result with ok False, not an exception: Ray retries
    only a worker that died, never a run that failed on its own params.
    """
    started = time.time()
    source = spec.pop("worker_source")
    report = Reporter(spec.pop("progress", None), spec["name"])
    report({"state": "running"})  # each attempt says so: the driver counts them
    spec = {**spec, "worker_pid": os.getpid()}
    proc = subprocess.Popen([sys.executable, "-c", source, json.dumps(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    out = []
    for line in proc.stdout:  # until the supervisor (the launcher's fork) exits
        if line.startswith(PROGRESS_MARK):
            report(json.loads(line[len(PROGRESS_MARK):]))
        else:
            out.append(line)
    proc.wait()
    for line in reversed(out):
        if line.startswith(RESULT_MARK):
            return {**json.loads(line[len(RESULT_MARK):]), "seconds": round(time.time() - started, 1)}
    text = "".join(out).strip()[-2000:]
    raise RuntimeError(f"the run's supervisor exited with {proc.returncode} and no result: {text}")


class Reporter:
    """Puts a run's progress, named after it, on the driver's queue (a `ray.util.queue.Queue`, None: nowhere).
    A queue gone (the driver stopped) ends the reports, never the run."""

    def __init__(self, queue, name):
        self.queue, self.name = queue, name

    def __call__(self, event):
        if self.queue is None:
            return
        try:
            self.queue.put_nowait({**event, "name": self.name})
        except Exception:  # whatever Ray raises for an actor that is gone: the run goes on unreported
            self.queue = None


def progress_event(line):
    """What the driver shows of one line of a run's log, or None: {"stage"} DVC starts running,
    {"epoch", "epochs", "eval_acc", "seconds"} a training stage ended, {"resumed"} the epoch it resumed after."""
    line = line.strip()
    if m := STAGE_LINE.match(line):
        return {"stage": m.group(1)}
    if m := EPOCH_LINE.match(line):
        return {"epoch": int(m.group(1)), "epochs": int(m.group(2)), "eval_acc": float(m.group(3)),
                "seconds": float(m.group(4))}
    if m := RESUMED_LINE.match(line):
        return {"resumed": int(m.group(1))}
    return None


class Follow(threading.Thread):
    """Follows a log as it grows and prints a PROGRESS line for each line of it that progress_event reads."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path, self.stopping = path, threading.Event()

    def run(self):
        with open(self.path, errors="replace") as log:
            pending = ""
            while True:
                last = self.stopping.wait(FOLLOW_SECONDS)
                *lines, pending = (pending + log.read()).split("\n")
                for line in lines:
                    if (event := progress_event(line)) is not None:
                        print(PROGRESS_MARK + json.dumps(event), flush=True)
                if last:
                    return

    def stop(self):
        """Read the log to its end, then stop."""
        self.stopping.set()
        self.join(timeout=5)


class Stopped(Exception):
    """A signal asked the supervisor to stop."""


class Supervisor:
    def __init__(self, spec):
        self.spec = spec
        self.proc = None
        self.delivering = False
        self.pending_signal = None
        self.stopping = False
        self.folder = tempfile.mkdtemp(prefix=f"{spec['temp_prefix']}{spec['name']}-", dir=spec["tmpdir"])
        self.repo = os.path.join(self.folder, "repo")
        self.log_path = os.path.join(self.folder, "log.txt")
        self.log = open(self.log_path, "a")
        self.follow = Follow(self.log_path)

    def on_signal(self, signum, frame):
        if self.delivering:  # a ref half-pushed is worse than a run that finished: let the push end
            self.pending_signal = signum
        elif not self.stopping:  # a second signal must not interrupt the cleanup the first one started
            self.stopping = True
            raise Stopped(signum)

    def command(self, *args, cwd=None, env=None):
        """Run one command, its output into the log, in a process group of its own (killed as a whole)."""
        self.log.write(f"$ {' '.join(args)}\n")
        self.log.flush()
        self.proc = subprocess.Popen(args, cwd=cwd or self.repo, env=env or self.env(), stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            code = self.proc.wait()
        finally:
            self.kill()
        if code != 0:
            raise subprocess.CalledProcessError(code, args)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.proc = None

    def env(self):
        """The environment of every command: this Python's `python` and `dvc` first on PATH, torch's
        threads limited to the run's share of the cores, DVC's per-repo state inside the temp folder."""
        bindir = os.path.dirname(sys.executable)
        threads = str(self.spec["threads"])
        env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
               "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "DVC_NO_ANALYTICS": "1",
               "PYTHONUNBUFFERED": "1",  # every line in the log as it is written: the driver follows it
               "DVC_SITE_CACHE_DIR": os.path.join(self.folder, "dvc-site"), "GIT_TERMINAL_PROMPT": "0"}
        env.pop("DVC_ROOT", None)
        return env

    def dvc(self, *args):
        self.command(sys.executable, "-m", "dvc", *args)

    def execute(self):
        spec = self.spec
        self.command("git", "clone", "-q", "--no-checkout", *(["--shared"] if spec["mode"] == "local" else []),
                     spec["git_source"], self.repo, cwd=self.folder)
        self.command("git", "-c", "advice.detachedHead=false", "checkout", "-q", "--detach", spec["commit"])
        for key, value in spec["git_identity"].items():
            self.command("git", "config", key, value)
        self.dvc("config", "--local", "cache.dir", spec["cache_dir"])
        self.dvc("config", "--local", "cache.type", spec["link_types"])
        os.makedirs(spec["resume_dir"], exist_ok=True)
        os.makedirs(os.path.join(self.repo, "data"), exist_ok=True)
        os.symlink(spec["resume_dir"], os.path.join(self.repo, "data", "resume"))  # git and DVC ignore it
        overrides = [arg for override in spec["overrides"] for arg in ("-S", override)]
        if spec["mode"] == "remote":
            self.dvc("remote", "add", "--local", "--force", "--default", spec["dvc_remote"], spec["dvc_remote_url"])
            self.dvc("fetch", "--run-cache", "--type", "metrics", "-q")  # the run-cache entries alone
            if spec["pull_first"]:  # outputs in a folder a stage depends on: `--pull` misses them
                self.dvc("pull", "-q", *spec["pull_first"])
            self.dvc("exp", "run", "--pull", "--allow-missing", "-n", spec["name"], *overrides)
        else:
            self.dvc("exp", "run", "-n", spec["name"], *overrides)
        ref = f"refs/exps/{spec['commit'][:2]}/{spec['commit'][2:]}/{spec['name']}"
        # --force: the driver gave this name to this run alone; a retry of a run whose first attempt
        # died after its push replaces that attempt's ref (same params, same code, same metrics).
        self.delivering = True
        if spec["mode"] == "remote":
            self.dvc("exp", "push", "--force", "--run-cache", "origin", spec["name"])
        else:
            self.command("git", "push", "-q", "--force", spec["git_source"], f"{ref}:{ref}")
        self.delivering = False

    def run(self):
        result = {"name": self.spec["name"], "host": os.uname().nodename, "ok": False}
        try:
            self.follow.start()
            self.execute()
            result["ok"] = True
        except subprocess.CalledProcessError:
            pass
        finally:
            self.stopping = True  # from here on a signal waits: the cleanup always finishes
            self.kill()
            self.follow.stop()
            self.log.close()
            with open(self.log_path) as f:
                log = f.read()
            shutil.rmtree(self.folder, ignore_errors=True)
        # The run ended on its own (a stopped one keeps its resume state untouched for its next try): a
        # success leaves nothing to resume, a failure keeps what it saved, if anything.
        resume = self.spec["resume_dir"]
        if result["ok"] or (os.path.isdir(resume) and not os.listdir(resume)):
            shutil.rmtree(resume, ignore_errors=True)
        result.update(log=log, ran=re.findall(r"^Running stage '([^']+)'", log, re.M))
        if not result["ok"]:
            result["error"] = one_line_error(log)
        return result


def one_line_error(log):
    """The line that says what went wrong: a stage's `error: ...` (named after the stage DVC says
    failed), else DVC's or git's own last error line, else the log's last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    failed = [m.group(1) for line in lines if (m := re.search(r"failed to reproduce '([^']+)'", line))]
    stage_errors = [line for line in lines if line.startswith("error: ")]
    if stage_errors:
        return f"{failed[-1]}: {stage_errors[-1]}" if failed else stage_errors[-1]
    tool_errors = [line for line in lines if line.startswith(("ERROR:", "fatal:"))]
    return (tool_errors or lines or ["no output"])[-1]


def log_tail(log, lines=LOG_TAIL_LINES):
    return "\n".join(log.rstrip().splitlines()[-lines:])


def watch(worker_pid):
    """SIGTERM this process once the Ray worker that started the run is gone."""
    def wait_for_exit():
        try:
            import select
            fd = os.pidfd_open(worker_pid)  # Linux: readable once the process has exited
            select.select([fd], [], [])
        except (AttributeError, OSError):
            while True:
                try:
                    os.kill(worker_pid, 0)
                except ProcessLookupError:
                    break
                except PermissionError:
                    pass
                time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=wait_for_exit, daemon=True).start()


def main(spec_json):
    spec = json.loads(spec_json)
    if os.fork():  # the launcher, the worker's child, exits at once; its fork carries on
        os._exit(0)
    supervisor = Supervisor(spec)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, supervisor.on_signal)
    watch(spec["worker_pid"])
    try:
        result = supervisor.run()
    except Stopped as stopped:
        sys.exit(128 + stopped.args[0])
    print(RESULT_MARK + json.dumps(result), flush=True)
    if supervisor.pending_signal is not None:
        sys.exit(128 + supervisor.pending_signal)


if __name__ == "__main__":
    main(sys.argv[1])
