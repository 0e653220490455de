"""Training speed: the project's loop against the loop most users write and a bare step loop.

    python -m bench.train_speed [--steps 200] [--warmup 20] [--device auto|cpu|cuda] [--threads N]
                                [--loops project,project-bf16,...] [--images N]

Same data, same model (lenet_mixup.model.lenet), batch 50, every variant params.yaml lists (`variants`, each
with its own params; a variant that transforms has every timed batch transformed). Every loop trains with the project's
optimizer, lenet_mixup.optim.make_optimizer (train.lr from params.yaml), so the loops differ in how they feed it:
  project     lenet_mixup.steps as the training stages run it: the set resident as one channels_last tensor,
              batches gathered by a shuffled index, losses left on the device; on the CPU one thread per op and
              each batch in train.shards pieces on the cores (lenet_mixup.cpu); a CUDA graph on CUDA
  project-bf16  the same with train.precision bf16: bf16 autocast for the forward pass and the loss
  dataloader  a torchvision-style Dataset of uint8 NCHW images with Minmax per item, DataLoader(shuffle=True,
              batch_size=50, num_workers=0), NCHW model, loss.item() every step
  bare        the same step as `dataloader` on NCHW batches already in memory, no indexing: that step's ceiling
  bare-fast   `bare` with the project's layout, allocator and thread settings and shards: the project's loop
              without its shuffled gather, the ceiling for the project's step (project/bare-fast is what
              shuffling costs)
The loops dataloader and bare run on torch's threads (its default, or --threads); the project's loops as
the stages run them.
Each loop lives in its own process (its peak memory is its own, data setup included) and the loops take
turns in windows of WINDOW steps, so load from other programs falls on all of them alike.
"""
import argparse
import multiprocessing as mp
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lenet_mixup import paths, steps, variant
from lenet_mixup.cifar import minmax, read_archive
from lenet_mixup.cpu import cores
from lenet_mixup.data import load_split
from lenet_mixup.device import resolve_device
from lenet_mixup.model import lenet
from lenet_mixup.optim import make_optimizer
from lenet_mixup.params import load_params

BATCH = 50
PARAMS_YAML = Path(__file__).parents[1] / paths.PARAMS
VARIANTS = tuple(load_params("variants", path=PARAMS_YAML)["variants"])  # what the pipeline trains
PARAMS = load_params("train", *VARIANTS, path=PARAMS_YAML)  # the stages' own: train.lr, train.shards, each variant's
SHARDS = PARAMS["train"]["shards"]
PROJECT_SETTINGS = ("project", "project-bf16", "bare-fast")  # the loops that run as the stages do
FORWARD_MFLOP, TRAIN_MFLOP = 9.10, 25.7  # per image: forward; forward + backward
EPOCHS, EPOCH_STEPS = 35, 1000  # a full stage: 35 epochs of 1000 steps of 50 images
LOOPS, WINDOW = ("project", "project-bf16", "dataloader", "bare", "bare-fast"), 20


def real():
    return all(paths.prepared_file(n).exists() for n in ("train_x", "train_y"))


def float_images(synthetic):
    """The prepared images (float32 NCHW after Minmax) and labels, or `synthetic` random ones (the same in
    every process)."""
    if real():
        return np.load(paths.prepared_file("train_x")), np.load(paths.prepared_file("train_y"))
    x, y = uint8_images(synthetic)
    return minmax(x), y


def uint8_images(synthetic):
    """The same images before Minmax: the archive's, or the prepared ones scaled back, or synthetic ones."""
    if real() and paths.RAW_ARCHIVE.exists():
        return read_archive(paths.RAW_ARCHIVE)[:2]
    if real():
        return np.rint(np.load(paths.prepared_file("train_x")) * 255).astype(np.uint8), \
            np.load(paths.prepared_file("train_y"))
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (synthetic, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, synthetic)


class MinmaxImages(Dataset):
    """What a torchvision-style dataset does: one uint8 image at a time, transformed on access."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return torch.from_numpy(minmax(self.images[i:i + 1])[0]), int(self.labels[i])  # Minmax over one image


def plain_net(device):
    """An NCHW LeNet, as most users write it, with the project's optimizer."""
    model = lenet().to(device)
    return model, make_optimizer(model, PARAMS["train"], device)


def transforms(name):
    """Whether a variant ever transforms: if it does, the benchmark transforms every batch of it."""
    return variant.load(name).first_epoch(PARAMS[name]) is not None


def augment(name):
    """What the training loop gives train_step for a variant that transforms (else None)."""
    return variant.augmenter(variant.load(name), PARAMS[name]) if transforms(name) else None


def project(device, synthetic, precision="fp32"):
    if real():
        x, y = load_split("train", device)
    else:
        images, labels = float_images(synthetic)
        x = torch.from_numpy(images).to(device).contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(labels).to(device)
    nets = {v: steps.new_model_and_optimizer(device, PARAMS["train"]) for v in VARIANTS}
    graphed = {}  # CUDA: the stages' GraphedEpochs, one per (variant, n), over the first n * BATCH images

    def run(name, n):
        if device.type == "cuda":
            if (name, n) not in graphed:
                graphed[name, n] = steps.GraphedEpochs(*nets[name], x[:n * BATCH], y[:n * BATCH], BATCH, n,
                                                       variant.load(name), PARAMS[name], precision)
            losses = graphed[name, n].epoch(torch.randperm(n * BATCH, device=device), transforms(name))
        else:
            order = torch.randperm(len(x), device=device)
            losses = steps.train_epoch(*nets[name], x, y, order, BATCH, n, augment(name), precision, shards=SHARDS)
        losses.mean().item()  # the stage reads the losses once, at the end of the epoch
    return run


def dataloader(device, synthetic):
    loader = DataLoader(MinmaxImages(*uint8_images(synthetic)), batch_size=BATCH, shuffle=True, drop_last=True)
    nets, batches = {v: plain_net(device) for v in VARIANTS}, iter(())

    def run(name, n):
        nonlocal batches
        for _ in range(n):
            if (batch := next(batches, None)) is None:  # a new epoch
                batches = iter(loader)
                batch = next(batches)
            x, y = batch[0].to(device), batch[1].to(device)
            steps.train_step(*nets[name], x, y, augment(name)).item()
    return run


def bare(device, synthetic, fast=False):
    images, labels = float_images(synthetic)
    x, y = torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device)
    if fast:
        x = x.contiguous(memory_format=torch.channels_last)
        steps.tune_cpu()
    batches = list(zip(x.split(BATCH), y.split(BATCH), strict=False))[:len(x) // BATCH]  # views: no copy, no index
    nets = {v: steps.new_model_and_optimizer(device, PARAMS["train"]) if fast else plain_net(device) for v in VARIANTS}
    at = 0

    def run(name, n):
        nonlocal at
        for _ in range(n):
            steps.train_step(*nets[name], *batches[at], augment(name), shards=SHARDS if fast else 1)
            at = (at + 1) % len(batches)
    return run


LOOP_SETUP = {"project": project, "project-bf16": lambda device, synthetic: project(device, synthetic, "bf16"),
              "dataloader": dataloader, "bare": bare,
              "bare-fast": lambda device, synthetic: bare(device, synthetic, fast=True)}


def serve(kind, device, threads, synthetic, conn):
    """A loop's process: set up, then time `n` steps of a variant on each request; last, report memory."""
    if kind in PROJECT_SETTINGS or device == "cuda":
        device = resolve_device(device, announce=False)  # as the stages: CUDA with TF32 off, CPU one thread per op
    else:  # PyTorch's defaults: its threads (or --threads), glibc's malloc settings, denormals kept
        device = torch.device(device)
        if threads:
            torch.set_num_threads(threads)
    run = LOOP_SETUP[kind](device, synthetic)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    while (job := conn.recv()) is not None:
        sync()
        start = time.perf_counter()
        run(*job)
        sync()
        conn.send(time.perf_counter() - start)
    if device.type == "cuda":
        conn.send(torch.cuda.max_memory_allocated() / 2**20)
    else:
        conn.send(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per loop and variant (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first (default 20)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the loops dataloader and bare "
                                                                   "(default: torch's)")
    parser.add_argument("--loops", default=",".join(LOOPS), help=f"which loops, comma-separated (default: all of "
                        f"{', '.join(LOOPS)})")
    parser.add_argument("--images", type=int, default=50_000, help="synthetic images when there is no data/prepared "
                        "here (default 50000, CIFAR-10's training set)")
    args = parser.parse_args()
    window = min(WINDOW, args.steps)  # fewer steps than a window: one window of exactly that many
    windows = args.steps // window if args.steps > 0 else 0
    loops = tuple(args.loops.split(","))
    if args.warmup < 0 or not 0 < args.steps <= EPOCH_STEPS:
        parser.error(f"--steps must lie in 1..{EPOCH_STEPS} and --warmup must be >= 0")
    if windows * window != args.steps:
        parser.error(f"--steps must be below {WINDOW} or a multiple of {WINDOW} (the steps are timed in windows)")
    if not set(loops) <= set(LOOPS) or "project" not in loops:
        parser.error(f"--loops must include project and name only {', '.join(LOOPS)}")
    needed = max(args.steps, args.warmup) * BATCH  # every step of a request on distinct images
    if real() and len(np.load(paths.prepared_file("train_y"))) < needed:
        parser.error(f"data/prepared holds fewer than the {needed} images {args.steps} steps need: lower --steps")
    if not real() and args.images < needed:
        parser.error(f"--images must hold at least {needed} images ({BATCH} per timed step)")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device, threads = ("cuda", 0) if cuda else ("cpu", args.threads or torch.get_num_threads())
    label = torch.cuda.get_device_name() if cuda else (
        f"CPU; project loops: one thread per op, {SHARDS} shards on {min(cores(), SHARDS)} workers; dataloader and "
        f"bare: torch on {threads} thread{'s' * (threads > 1)}")
    load, cpus = os.getloadavg()[0], os.cpu_count()
    print(f"device: {device} ({label}); load average {load:.1f} on {cpus} CPUs"
          + (": other programs are running, figures are contended" if load > 0.5 else ""))
    print("data: " + ("data/prepared (real CIFAR-10)" if real() else f"synthetic random images of CIFAR-10's "
                      f"shape ({args.images} x 3 x 32 x 32): there is no data/prepared here"))
    print(f"{args.steps} timed steps per loop and variant, in {windows} windows of {window} taken in turn, "
          f"after {args.warmup} untimed; batch {BATCH}; model {FORWARD_MFLOP} MFLOP forward, "
          f"{TRAIN_MFLOP} MFLOP forward+backward per image\n", flush=True)
    ceiling = {} if cuda else sgemm_ceiling()
    if ceiling:
        rates = ", ".join(f"{t} thread{'s' * (t > 1)} {gflops:.0f} GFLOP/s" for t, gflops in ceiling.items())
        print(f"ceiling: torch's sgemm, 1024 x 1024 float32, {rates} ({ceiling[max(ceiling)] / ceiling[1]:.2f}x); "
              f"each loop's share of the {max(ceiling)}-thread rate below\n", flush=True)
    context, pipes, processes = mp.get_context("spawn"), {}, []
    for kind in loops:
        pipes[kind], child = context.Pipe()
        processes.append(context.Process(target=serve, args=(kind, device, args.threads, args.images, child),
                                         daemon=True))
        processes[-1].start()

    def ask(kind, job):
        pipes[kind].send(job)
        return pipes[kind].recv()

    seconds = {(v, k): [] for v in VARIANTS for k in loops}
    for name in VARIANTS:
        for kind in loops:
            if args.warmup:
                ask(kind, (name, args.warmup))
        for _ in range(windows):
            for kind in loops:
                seconds[name, kind].append(ask(kind, (name, window)))
    peaks = {kind: ask(kind, None) for kind in loops}
    for process in processes:
        process.join()

    # The median window: a burst of load from another program spoils one window, not the figure.
    rates = {key: sorted(window * BATCH / t for t in s) for key, s in seconds.items()}
    rate = {key: float(np.median(r)) for key, r in rates.items()}
    top = ceiling[max(ceiling)] * 1000 if ceiling else None  # MFLOP/s
    print(f"{'variant':9}{'loop':14}{'img/s':>8}{'(windows min-max)':>20}{'ms/step':>9}{'MFLOP/s':>10}"
          + (f"{'of sgemm':>10}" if top else ""))
    for (name, kind), r in rates.items():
        share = f"{rate[name, kind] * TRAIN_MFLOP / top:10.0%}" if top else ""
        print(f"{name:9}{kind:14}{rate[name, kind]:8.0f}{f'({r[0]:.0f}-{r[-1]:.0f})':>20}"
              f"{1000 * BATCH / rate[name, kind]:9.2f}{rate[name, kind] * TRAIN_MFLOP:10.0f}{share}")
    print("(img/s: the median window)\n")
    targets = {"dataloader": " (target >= 1.3)", "bare": " (target >= 0.95)"}
    for name in VARIANTS:
        ratios = [f"project/{k} {rate[name, 'project'] / rate[name, k]:.2f}x{targets.get(k, '')}"
                  for k in loops if k not in ("project", "project-bf16")]
        if "project-bf16" in loops:
            ratios.append(f"project-bf16/project {rate[name, 'project-bf16'] / rate[name, 'project']:.2f}x")
        print(f"{name}: " + ", ".join(ratios))
    memory = "peak GPU memory allocated" if cuda else "peak RSS, data setup included"
    print(f"\n{memory}, and a full stage EXTRAPOLATED from these rates (not measured; {EPOCHS} epochs x "
          f"{EPOCH_STEPS} steps x {BATCH} images, training steps only, no evaluation; a variant's plain epochs "
          f"at the {variant.REFERENCE}'s rate):")
    for kind in loops:
        epoch = {v: EPOCH_STEPS * BATCH / rate[v, kind] / 60 for v in VARIANTS}
        print(f"  {kind:13}{peaks[kind]:7.0f} MiB   " + ", ".join(stage(name, epoch) for name in VARIANTS))


def sgemm_ceiling(size=1024, seconds=1.0):
    """{threads: GFLOP/s} of torch's float32 matrix product on 1 and on every core (at most 2 where there are
    2): the most this CPU's arithmetic gives, measured now, beside which each loop's rate is read."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    before, rates = torch.get_num_threads(), {}
    for threads in sorted({1, min(2, cores()), cores()}):
        torch.set_num_threads(threads)
        a @ b  # warm up this thread count's pool
        done, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            a @ b
            done += 1
        rates[threads] = 2 * size**3 * done / elapsed / 1e9
    torch.set_num_threads(before)
    return rates


def stage(name, epoch_minutes):
    """A variant's full stage at these rates: its plain epochs at the reference's rate, the others at its own."""
    module = variant.load(name)
    first = module.first_epoch(PARAMS[name])
    plain = EPOCHS if first is None else min(first, EPOCHS)
    minutes = plain * epoch_minutes[variant.REFERENCE] + (EPOCHS - plain) * epoch_minutes[name]
    split = f" ({plain} plain + {EPOCHS - plain} {module.ACTION} epochs)" if plain < EPOCHS else ""
    return f"{name} stage{split} {minutes:5.1f} min"


if __name__ == "__main__":
    main()
