"""Training beside other work, and the seconds spent around training: what a user's machine sees.

A laptop or a CI runner is rarely idle, and a pipeline is more than its training loop: this measures the
stages' CPU settings where other programs compete for the cores, and what a whole `dvc repro` costs beyond training.

    python -m bench.contention [--steps 300] [--rounds 3] [--variant NAME] [--shards N] [--no-repro]

Part 1, throughput. The training stages' loop (lenet_mixup.steps.train_epoch, batch 50, on data/prepared
when the current folder has it, else on synthetic images; --variant: any variant in lenet_mixup/variants/, with
its params from params.yaml, every batch transformed if it transforms at all) runs in processes of its own, under three
conditions:
  alone         nothing else running
  busy core     beside a process that keeps one core busy: any other program on a laptop or a CI runner
  two at once   two trainings at the same time, as `dvc queue start -j 2` runs them (their sum)
with these settings:
  default       the stages' own: one thread per op, each batch in train.shards pieces (params.yaml) on
                as many workers as there are cores (lenet_mixup.cpu)
  threads N     PyTorch's usual way: each op spread over N threads, the batch whole (N = 1 .. cores);
                `threads <cores>` is torch's default
Each setting's two worker processes start once and keep training between measurements; every
(condition, setting) is measured --rounds times, taken in turn, and its median kept. The goals:
default >= 0.9x the best fixed thread count beside a busy core and two at once, >= 1.1x torch's
default alone.

Part 2, time around training. A forced `dvc repro` of the whole pipeline on a tiny archive (1,000 train and
1,000 eval synthetic images, one epoch) in a new project of its own, each stage's wall time as DVC runs it,
against `import torch` timed in the same run. The goal: the whole repro within 8 imports of torch.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lenet_mixup import variant  # imports no torch

ROOT = Path(__file__).resolve().parents[1]
BATCH, WARMUP = 50, 20
CONDITIONS = ("alone", "busy core", "two at once")


def worker(setting, steps, name, shards):
    """One training process: set up and warm up, say ready; then, for every `go` line, time `steps` more steps
    and print img/s, until stdin closes."""
    import numpy as np
    import torch

    from lenet_mixup import cpu, paths
    from lenet_mixup.params import load_params
    from lenet_mixup.steps import new_model_and_optimizer, train_epoch

    if setting == "default":
        cpu.use_one_thread_per_op()
    else:
        torch.set_num_threads(int(setting.split()[1]))
        cpu.tune_cpu()
        shards = 1
    n = (steps + WARMUP) * BATCH
    if paths.prepared_file("train_x").exists():
        x = torch.from_numpy(np.load(paths.prepared_file("train_x"), mmap_mode="r")[:n].copy())
        y = torch.from_numpy(np.load(paths.prepared_file("train_y"))[:n])
    else:
        x, y = torch.rand(n, 3, 32, 32), torch.randint(0, 10, (n,))
    x = x.contiguous(memory_format=torch.channels_last)
    params = load_params("train", name, path=ROOT / "params.yaml")
    module = variant.load(name)
    augment = variant.augmenter(module, params[name]) if module.first_epoch(params[name]) is not None else None
    torch.manual_seed(0)
    model, optimizer = new_model_and_optimizer(torch.device("cpu"), params["train"])

    def run(count):
        order = torch.randperm(len(x))
        train_epoch(model, optimizer, x, y, order, BATCH, count, augment, shards=shards).sum().item()
    run(WARMUP)
    print("ready", flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        run(steps)
        print(f"{steps * BATCH / (time.perf_counter() - start):.1f}", flush=True)


def start_workers(setting, steps, name, shards):
    """Two worker processes of one setting (the second for `two at once`), ready."""
    command = [sys.executable, "-m", "bench.contention", "--worker", setting, "--steps", str(steps),
               "--variant", name, "--shards", str(shards)]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}  # no settings
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    procs = [subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        if p.stdout.readline().strip() != "ready":
            raise SystemExit(f"a `{setting}` worker did not start")
    return procs


def measure(condition, procs):
    """img/s under one condition: one worker alone or beside a busy core, or both at once (their sum)."""
    running = procs if condition == "two at once" else procs[:1]
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if condition == "busy core" else None
    try:
        if busy:
            time.sleep(0.5)  # the busy process is running before the timing starts
        for p in running:
            p.stdin.write("go\n")
            p.stdin.flush()
        return sum(float(p.stdout.readline()) for p in running)
    finally:
        if busy:
            busy.kill()
            busy.wait()


def contention(steps, rounds, name, shards):
    from lenet_mixup import cpu
    cores = cpu.cores()
    settings = ["default", *(f"threads {n}" for n in range(1, cores + 1))]
    workers = {s: start_workers(s, steps, name, shards) for s in settings}
    rates = {(c, s): [] for c in CONDITIONS for s in settings}
    try:
        for _ in range(rounds):
            for condition in CONDITIONS:
                for setting in settings:
                    rates[condition, setting].append(measure(condition, workers[setting]))
    finally:
        for procs in workers.values():
            for p in procs:
                p.stdin.close()
                p.wait()
    median = {key: statistics.median(r) for key, r in rates.items()}
    torch_default = f"threads {cores}"
    print(f"{name}, batch {BATCH}, {steps} timed steps per measurement, median of {rounds} rounds taken in turn; "
          f"default: {shards} shards on up to {cores} workers of one thread; img/s (two at once: the sum)\n")
    print(f"{'condition':13}" + "".join(f"{s:>12}" for s in settings) + f"{'best fixed':>14}{'default/best':>14}"
          f"{'default/torch default':>23}")
    for condition in CONDITIONS:
        best = max(settings[1:], key=lambda s: median[condition, s])
        print(f"{condition:13}" + "".join(f"{median[condition, s]:12.0f}" for s in settings)
              + f"{best:>14}{median[condition, 'default'] / median[condition, best]:13.2f}x"
              + f"{median[condition, 'default'] / median[condition, torch_default]:22.2f}x")
    print(f"\ngoals: default/best >= 0.9 beside a busy core and two at once; default/torch default >= 1.1 alone "
          f"(torch default: {torch_default})")


def forced_repro():
    """A forced `dvc repro` of a tiny project, one line per stage, and `import torch` timed beside it."""
    from lenet_mixup.params import dump_yaml, read_yaml
    from lenet_mixup.synthetic import synthetic_split, write_archive
    work = Path(tempfile.mkdtemp(prefix="bench-repro-"))
    try:
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

        def sh(*args):
            subprocess.run(args, cwd=work, env=env, check=True, capture_output=True, text=True)
        for name in ("dvc.yaml", "stages", "lenet_mixup", "requirements.txt", ".dvcignore", ".gitignore"):
            copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
            copy(ROOT / name, work / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                              if (ROOT / name).is_dir() else {}))
        md5 = write_archive(work / "tiny.tar.gz", synthetic_split(1000, 0), synthetic_split(1000, 1))
        params = read_yaml((ROOT / "params.yaml").read_text())
        params["data"].update(url=str(work / "tiny.tar.gz"), md5=md5)
        params["train"].update(epochs=1)
        (work / "params.yaml").write_text(dump_yaml(params))
        sh("git", "init", "-q")
        sh(sys.executable, "-m", "dvc", "init", "-q")
        sh(sys.executable, "-m", "dvc", "config", "core.analytics", "false")
        starts, start = [], time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--force"], cwd=work, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for line in proc.stdout:
            if m := re.match(r"Running stage '([^']+)'", line):
                starts.append((m.group(1), time.perf_counter()))
        end = time.perf_counter()
        if proc.wait() != 0:
            raise SystemExit("the forced dvc repro failed")
        imports = []
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import torch"], check=True)
            imports.append(time.perf_counter() - t)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    torch_import = statistics.median(imports)
    print(f"\nforced `dvc repro` of {len(starts)} stages, tiny archive (1000 + 1000 synthetic images), 1 epoch:")
    print(f"  {'before the first stage (DVC starts, checks)':46}{starts[0][1] - start:6.1f} s")
    for (stage, t), (_, t_next) in zip(starts, [*starts[1:], (None, end)], strict=True):
        print(f"  {stage:46}{t_next - t:6.1f} s")
    total = end - start
    print(f"  {'total':46}{total:6.1f} s = {total / torch_import:.1f} x `import torch` ({torch_import:.2f} s, "
          f"median of 3); goal <= 8 x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="timed steps per measurement (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per condition and setting (default 3)")
    parser.add_argument("--variant", choices=variant.available(), default=variant.REFERENCE)
    parser.add_argument("--shards", type=int, help="the default setting's shards (default: params.yaml's train.shards)")
    parser.add_argument("--no-repro", action="store_true", help="skip part 2, the forced dvc repro")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.steps, args.variant, args.shards)
    if args.steps < 1 or args.rounds < 1 or (args.shards is not None and args.shards < 1):
        parser.error("--steps, --rounds and --shards must be at least 1")
    if args.shards is None:
        from lenet_mixup.params import load_params
        args.shards = load_params("train", path=ROOT / "params.yaml")["train"]["shards"]
    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {os.cpu_count()} CPUs at the start"
          + (": other programs are running, figures are contended" if load > 0.5 else ""))
    data = "data/prepared (real CIFAR-10)" if Path("data/prepared/train_x.npy").exists() else "synthetic images"
    print(f"data: {data}\n", flush=True)
    contention(args.steps, args.rounds, args.variant, args.shards)
    if not args.no_repro:
        forced_repro()


if __name__ == "__main__":
    main()
