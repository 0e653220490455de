"""Training speed: the project's loop against the loop most users write and a bare step loop.

    python -m bench.train_speed [--steps 200] [--warmup 20] [--device auto|cpu|cuda] [--threads N]

Same data, same model (stages.model.lenet), Adam (lr 1e-3, eps 1e-7), batch 50, plain and mixup (alpha 1):
  project     stages.train as the stages run it: the set resident as one channels_last tensor, batches
              gathered by a shuffled index, fused Adam, losses left on the device (a CUDA graph on CUDA)
  dataloader  a torchvision-style Dataset of uint8 NCHW images with Minmax per item, DataLoader(shuffle=True,
              batch_size=50, num_workers=0), NCHW model, Adam's default implementation, loss.item() every step
  bare        the same step as `dataloader` on NCHW batches already in memory, no indexing: that step's ceiling
  bare-fast   `bare` with the project's layout, optimizer and allocator setting: the project's loop without its
              shuffled gather, the ceiling for the project's step (project/bare-fast is what shuffling costs)
Each loop lives in its own process (its peak memory is its own, data setup included) and the loops take
turns in windows of WINDOW steps, so load from other programs falls on all of them alike.
"""
import argparse
import multiprocessing as mp
import os
import resource
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from stages import paths, steps, train
from stages.cifar import minmax, read_archive
from stages.model import lenet

BATCH, LR, EPS, ALPHA = 50, 1e-3, 1e-7, 1.0
FORWARD_MFLOP, TRAIN_MFLOP = 9.10, 25.7  # per image: forward; forward + backward
EPOCHS, EPOCH_STEPS = 35, 1000  # a full stage: 35 epochs of 1000 steps of 50 images
LOOPS, VARIANTS, WINDOW = ("project", "dataloader", "bare", "bare-fast"), ("baseline", "mixup"), 20
SYNTHETIC = 50_000


def real():
    return all(paths.prepared_file(n).exists() for n in ("train_x", "train_y"))


def float_images():
    """The prepared images (float32 NCHW after Minmax) and labels, or synthetic ones (the same in every process)."""
    if real():
        return np.load(paths.prepared_file("train_x")), np.load(paths.prepared_file("train_y"))
    x, y = uint8_images()
    return minmax(x), y


def uint8_images():
    """The same images before Minmax: the archive's, or the prepared ones scaled back, or synthetic ones."""
    if real() and paths.RAW_ARCHIVE.exists():
        return read_archive(paths.RAW_ARCHIVE)[:2]
    if real():
        return np.rint(np.load(paths.prepared_file("train_x")) * 255).astype(np.uint8), \
            np.load(paths.prepared_file("train_y"))
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (SYNTHETIC, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, SYNTHETIC)


class MinmaxImages(Dataset):
    """What a torchvision-style dataset does: one uint8 image at a time, transformed on access."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return torch.from_numpy(minmax(self.images[i:i + 1])[0]), int(self.labels[i])  # Minmax over one image


def plain_net(device):
    model = lenet().to(device)
    return model, torch.optim.Adam(model.parameters(), lr=LR, eps=EPS)


def project(device):
    if real():
        x, y = train.load_split("train", device)
    else:
        images, labels = float_images()
        x = torch.from_numpy(images).to(device).contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(labels).to(device)
    nets = {v: steps.new_model_and_optimizer(device, LR) for v in VARIANTS}
    graphed = {}  # CUDA: the stages' GraphedEpochs, one per (variant, steps), over the first steps * BATCH images

    def run(variant, steps):
        alpha = ALPHA if variant == "mixup" else None
        if device.type == "cuda":
            key = (variant, steps)
            if key not in graphed:
                graphed[key] = steps.GraphedEpochs(*nets[variant], x[:steps * BATCH], y[:steps * BATCH], BATCH)
            losses = graphed[key].epoch(torch.randperm(steps * BATCH, device=device), alpha)
        else:
            order = torch.randperm(len(x), device=device)[:steps * BATCH]
            losses = steps.train_epoch(*nets[variant], x, y, order, BATCH, alpha)
        losses.mean().item()  # the stage reads the losses once, at the end of the epoch
    return run


def dataloader(device):
    loader = DataLoader(MinmaxImages(*uint8_images()), batch_size=BATCH, shuffle=True, drop_last=True)
    nets, batches = {v: plain_net(device) for v in VARIANTS}, iter(())

    def run(variant, steps):
        nonlocal batches
        for _ in range(steps):
            if (batch := next(batches, None)) is None:  # a new epoch
                batches = iter(loader)
                batch = next(batches)
            x, y = batch[0].to(device), batch[1].to(device)
            steps.train_step(*nets[variant], x, y, ALPHA if variant == "mixup" else None).item()
    return run


def bare(device, fast=False):
    images, labels = float_images()
    x, y = torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device)
    if fast:
        x = x.contiguous(memory_format=torch.channels_last)
        steps.tune_cpu()
    batches = list(zip(x.split(BATCH), y.split(BATCH), strict=True))  # views: no copy, no indexing
    nets, at = {v: steps.new_model_and_optimizer(device, LR) if fast else plain_net(device) for v in VARIANTS}, 0

    def run(variant, steps):
        nonlocal at
        for _ in range(steps):
            steps.train_step(*nets[variant], *batches[at], ALPHA if variant == "mixup" else None)
            at = (at + 1) % len(batches)
    return run


def serve(kind, device, threads, conn):
    """A loop's process: set up, then time `steps` steps of a variant on each request; last, report memory."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device)
    run = {"project": project, "dataloader": dataloader, "bare": bare,
           "bare-fast": lambda device: bare(device, fast=True)}[kind](device)
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
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads in every loop (default: torch's)")
    args = parser.parse_args()
    windows = -(-args.steps // WINDOW)
    if args.warmup < 0 or not 0 < windows * WINDOW <= EPOCH_STEPS:
        parser.error(f"--steps must lie in 1..{EPOCH_STEPS} and --warmup must be >= 0")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device, threads = ("cuda", 0) if cuda else ("cpu", args.threads or torch.get_num_threads())
    label = torch.cuda.get_device_name() if cuda else f"CPU, torch on {threads} thread{'s' * (threads > 1)}"
    load, cpus = os.getloadavg()[0], os.cpu_count()
    print(f"device: {device} ({label}); load average {load:.1f} on {cpus} CPUs"
          + (": other programs are running, figures are contended" if load > 0.5 else ""))
    print("data: " + ("data/prepared (real CIFAR-10)" if real() else f"synthetic random images of CIFAR-10's "
                      f"shape ({SYNTHETIC} x 3 x 32 x 32): there is no data/prepared here"))
    print(f"{windows * WINDOW} timed steps per loop and variant, in {windows} windows of {WINDOW} taken in turn, "
          f"after {args.warmup} untimed; batch {BATCH}; model {FORWARD_MFLOP} MFLOP forward, "
          f"{TRAIN_MFLOP} MFLOP forward+backward per image\n")
    context, pipes, processes = mp.get_context("spawn"), {}, []
    for kind in LOOPS:
        pipes[kind], child = context.Pipe()
        processes.append(context.Process(target=serve, args=(kind, device, args.threads, child), daemon=True))
        processes[-1].start()

    def ask(kind, job):
        pipes[kind].send(job)
        return pipes[kind].recv()

    seconds = {(v, k): [] for v in VARIANTS for k in LOOPS}
    for variant in VARIANTS:
        for kind in LOOPS:
            if args.warmup:
                ask(kind, (variant, args.warmup))
        for _ in range(windows):
            for kind in LOOPS:
                seconds[variant, kind].append(ask(kind, (variant, WINDOW)))
    peaks = {kind: ask(kind, None) for kind in LOOPS}
    for process in processes:
        process.join()

    # The median window: a burst of load from another program spoils one window, not the figure.
    rates = {key: sorted(WINDOW * BATCH / t for t in s) for key, s in seconds.items()}
    rate = {key: float(np.median(r)) for key, r in rates.items()}
    print(f"{'variant':9}{'loop':12}{'img/s':>8}{'(windows min-max)':>20}{'ms/step':>9}{'MFLOP/s':>10}")
    for (variant, kind), r in rates.items():
        print(f"{variant:9}{kind:12}{rate[variant, kind]:8.0f}{f'({r[0]:.0f}-{r[-1]:.0f})':>20}"
              f"{1000 * BATCH / rate[variant, kind]:9.1f}{rate[variant, kind] * TRAIN_MFLOP:10.0f}")
    print("(img/s: the median window)\n")
    for variant in VARIANTS:
        over = {k: rate[variant, "project"] / rate[variant, k] for k in LOOPS[1:]}
        print(f"{variant}: project/dataloader {over['dataloader']:.2f}x (target >= 1.3), project/bare "
              f"{over['bare']:.2f}x (target >= 0.95), project/bare-fast {over['bare-fast']:.2f}x")
    memory = "peak GPU memory allocated" if cuda else "peak RSS, data setup included"
    print(f"\n{memory}, and a full stage EXTRAPOLATED from these rates (not measured; {EPOCHS} epochs x "
          f"{EPOCH_STEPS} steps x {BATCH} images, training steps only, no evaluation):")
    for kind in LOOPS:
        epoch = {v: EPOCH_STEPS * BATCH / rate[v, kind] / 60 for v in VARIANTS}
        print(f"  {kind:11}{peaks[kind]:7.0f} MiB   baseline stage {EPOCHS * epoch['baseline']:5.1f} min, "
              f"mixup stage (1 plain + {EPOCHS - 1} mixup epochs) "
              f"{epoch['baseline'] + (EPOCHS - 1) * epoch['mixup']:5.1f} min")


if __name__ == "__main__":
    main()
