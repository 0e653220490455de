"""Stages `train_baseline` and `train_mixup`: python -m stages.train {baseline|mixup}

FastEstimator's LeNet tutorial, one variant per stage: Adam (lr from params, betas 0.9/0.999,
eps 1e-7 as in Keras), batch `train.batch_size`, reshuffled every epoch, sparse cross-entropy,
evaluation on every eval image after each epoch. The mixup variant mixes from epoch `warmup` on.

The whole prepared set lives in memory (on the GPU when there is one) as one tensor; batches are
gathered by index, and per-step losses stay on the device until the epoch ends, so the loop never
waits on the host. On CUDA the whole step (gather, forward, backward, Adam) is captured once as a
CUDA graph and replayed, with the epoch's order, mixup's lambdas, the losses and the step counter in
device buffers (eager, with the same buffers, where capture fails). Each epoch ends with a resume
checkpoint: a killed run picks up where it was. `python -m bench.train_speed` measures the loop.
"""
import ctypes
import functools
import hashlib
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from stages import paths
from stages.metrics import summarize, write_summary, write_tsv
from stages.mixup import is_mixup_epoch, mixup_batch, mixup_loss, sample_lambda
from stages.model import lenet
from stages.params import load_params
from stages.stage import UserError, atomic_output, run

EVAL_BATCH = 1000
SOURCES = [Path(__file__).with_name(n) for n in ("train.py", "model.py", "mixup.py")]


def resolve_device(name):
    device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device} ({label})")
    return device


def load_split(split, device):
    """Images as a channels_last tensor (the faster conv layout on CPU), labels as int64."""
    x = np.load(paths.prepared_file(f"{split}_x"), mmap_mode="c")  # copy-on-write: writable, read lazily
    y = np.load(paths.prepared_file(f"{split}_y"))
    if x.ndim != 4 or x.shape[1:] != (3, 32, 32) or x.dtype != np.float32:
        raise UserError(f"{paths.prepared_file(f'{split}_x')}: expected float32 (N, 3, 32, 32), found "
                        f"{x.dtype} {x.shape}; rerun `dvc repro prepare`")
    if y.shape != (len(x),) or y.dtype != np.int64 or (y.size and not 0 <= y.min() <= y.max() <= 9):
        raise UserError(f"{paths.prepared_file(f'{split}_y')}: expected {len(x)} int64 labels in 0..9 to match "
                        f"{len(x)} images, found {y.dtype} {y.shape}; rerun `dvc repro prepare`")
    x = torch.from_numpy(x).to(device).contiguous(memory_format=torch.channels_last)  # the one copy
    return x, torch.from_numpy(y).to(device)


@torch.inference_mode()
def evaluate(model, x, y):
    """Mean cross-entropy and accuracy over all of (x, y); never mixed."""
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for i in range(0, len(x), EVAL_BATCH):
        logits = model(x[i:i + EVAL_BATCH])
        loss_sum += F.cross_entropy(logits, y[i:i + EVAL_BATCH], reduction="sum")
        correct += (logits.argmax(1) == y[i:i + EVAL_BATCH]).sum()
    model.train()
    return loss_sum.item() / len(x), correct.item() / len(x)


def new_model_and_optimizer(device, lr):
    """LeNet in channels_last (the faster conv layout on CPU) and Adam as Keras ran it.

    Fused: one kernel per step, measured faster on the CPU too; capturable on CUDA, for GraphedEpochs.
    """
    model = lenet().to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-7, fused=True,
                                 capturable=torch.device(device).type == "cuda")
    return model, optimizer


def train_step(model, optimizer, x, y, alpha=None):
    """One optimizer step, with mixup when alpha is given; returns the loss without a host sync."""
    if alpha is not None:
        lam = sample_lambda(alpha, x.device)
        loss = mixup_loss(model(mixup_batch(x, lam)), y, lam)
    else:
        loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def train_epoch(model, optimizer, train_x, train_y, order, batch_size, alpha=None, progress=None):
    """One pass over `order` in batches (the last partial batch dropped); returns per-step losses.

    Losses stay on the device; with `progress` (a label) a tqdm bar shows the running loss.
    This is the CPU path (and the reference for the CUDA one, GraphedEpochs).
    """
    tune_cpu()
    steps = len(order) // batch_size
    losses = torch.zeros(steps, device=train_x.device)
    for step in _progress(0, steps, progress, losses):
        idx = order[step * batch_size:(step + 1) * batch_size]
        losses[step] = train_step(model, optimizer, train_x[idx], train_y[idx], alpha)
    return losses


@functools.cache
def tune_cpu():
    """Two process-wide CPU settings that each made training measurably faster here, same results.

    - glibc keeps freed blocks of up to 32 MiB for reuse instead of handing them back to the OS.
      PyTorch's CPU allocator has no cache: each step allocates and frees activations of a few MiB,
      which glibc by default maps and unmaps every time, so the kernel zero-fills fresh pages on every
      step (1.3-1.7x per step, bench/train_speed.py). Without glibc this part does nothing.
    - Denormal floats flush to zero. Mixup's gradients drift into the denormal range, where x86
      arithmetic is many times slower: the mixup stage ran at 5,800 img/s without, 7,700 with, and
      its per-epoch metrics agreed to the digits logged.
    """
    torch.set_flush_denormal(True)
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return
    mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: blocks below 32 MiB (glibc's maximum) come from the heap
    mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: give the heap's top back only beyond 1 GiB free


def _progress(start, steps, label, losses):
    """range(start, steps); with a label, under a tqdm bar showing the mean loss of the last 50 steps."""
    bar = tqdm(range(start, steps), desc=label, total=steps, initial=start, disable=label is None, leave=False)
    for step in bar:
        yield step
        if label is not None and step % 50 == 49:  # the one host sync, every 50 steps, only with a bar
            bar.set_postfix(loss=f"{losses[step - 49:step + 1].mean().item():.4f}")


class GraphedEpochs:
    """The CUDA path: the training step captured once as a CUDA graph, then replayed for every step.

    A graph replays fixed kernels on fixed memory, so everything a step reads lives in device buffers
    that the host refills once per epoch: the shuffled order, one lambda per step, the per-step losses
    and a step counter that the step itself advances. Plain epochs use lambda = 1, which is exactly the
    plain step (1 * x + 0 * x_prev = x and 1 * CE(y) + 0 * CE(y_prev) = CE(y)), so one graph serves
    both. The first WARMUP steps run eagerly on a side stream (Adam makes its state on its first step),
    as torch.cuda.graph's documentation asks; if capture fails the same step runs eagerly, still with
    no host sync inside the epoch.
    """
    WARMUP = 3

    def __init__(self, model, optimizer, train_x, train_y, batch_size):
        device = train_x.device
        self.model, self.optimizer, self.x, self.y, self.batch_size = model, optimizer, train_x, train_y, batch_size
        self.steps = len(train_x) // batch_size
        self.order = torch.zeros(len(train_x), dtype=torch.long, device=device)
        self.lams = torch.ones(self.steps, device=device)  # float32, as sample_lambda draws them
        self.losses = torch.zeros(self.steps, device=device)
        self.counter = torch.zeros(1, dtype=torch.long, device=device)
        self.offsets = torch.arange(batch_size, device=device)
        self.graph, self.eager = None, False

    def step(self):
        """Train on batch number `counter` of the order, record its loss, advance the counter."""
        idx = self.order.index_select(0, self.counter * self.batch_size + self.offsets)
        x, y = self.x[idx], self.y[idx]
        lam = self.lams.index_select(0, self.counter).squeeze(0)
        loss = mixup_loss(self.model(mixup_batch(x, lam)), y, lam)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.losses.index_copy_(0, self.counter, loss.detach().float().unsqueeze(0))
        self.counter += 1

    def epoch(self, order, alpha=None, progress=None):
        """Train one epoch in the given order, mixing when alpha is given; returns per-step losses."""
        self.order.copy_(order)
        if alpha is None:
            self.lams.fill_(1.0)
        else:
            concentration = torch.full((), float(alpha), device=self.x.device)
            beta = torch.distributions.Beta(concentration, concentration, validate_args=False)  # no sync
            self.lams.copy_(beta.sample((self.steps,)))
        self.counter.zero_()
        done = self.capture() if self.graph is None and not self.eager else 0
        for _ in _progress(done, self.steps, progress, self.losses):
            self.graph.replay() if self.graph is not None else self.step()
        return self.losses.clone()

    def capture(self):
        """Warm up, then record one step as a graph (recording runs nothing); returns the steps run."""
        warmup = min(self.WARMUP, self.steps)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self.step()
        torch.cuda.current_stream().wait_stream(side)
        try:
            graph = torch.cuda.CUDAGraph()
            self.optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                self.step()
            self.graph = graph
        except RuntimeError as e:
            warnings.warn(f"CUDA graph capture failed, training eagerly instead: {e}", stacklevel=2)
            self.eager = True
        return warmup


def fingerprint(config):
    """What a resume checkpoint must match: the params, the training code and the prepared data."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for source in SOURCES:
        h.update(source.read_bytes())
    for name in ("train_x", "train_y", "eval_x", "eval_y"):
        stat = paths.prepared_file(name).stat()
        h.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return h.hexdigest()


def train_variant(variant, train, mixup, device, resume_path=None):
    """Train one variant; returns (per-epoch rows, best checkpoint, final checkpoint).

    With `resume_path`, the state is saved there after every epoch and a matching saved state
    (same params, code and data) is resumed from.
    """
    train_x, train_y = load_split("train", device)
    eval_x, eval_y = load_split("eval", device)
    batch_size, epochs = train["batch_size"], train["epochs"]
    if batch_size > len(train_x):
        raise UserError(f"train.batch_size = {batch_size} is larger than the {len(train_x)} training images; "
                        "lower train.batch_size")
    steps = len(train_x) // batch_size  # the last partial batch is dropped, as FastEstimator did
    torch.manual_seed(train["seed"])  # weights and mixup's lambdas
    shuffle = torch.Generator(device=device).manual_seed(train["seed"])
    model, optimizer = new_model_and_optimizer(device, train["lr"])
    state = {"fingerprint": fingerprint({"variant": variant, "train": train, "mixup": mixup}),
             "epoch": 0, "rows": [], "best": None}
    if resume_path is not None and resume_path.exists():
        saved = torch.load(resume_path, map_location=device, weights_only=False)
        if saved["fingerprint"] == state["fingerprint"]:
            state = saved
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            torch.set_rng_state(saved["torch_rng"])
            shuffle.set_state(saved["shuffle_rng"])
            print(f"resuming {variant} after epoch {state['epoch']} from {resume_path}")
        else:
            print(f"ignoring {resume_path}: it was written for other params, code or data")

    graphed = GraphedEpochs(model, optimizer, train_x, train_y, batch_size) if device.type == "cuda" else None
    interactive = sys.stderr.isatty()
    for epoch in range(state["epoch"], epochs):
        mixing = mixup is not None and is_mixup_epoch(epoch, mixup["warmup"])
        order = torch.randperm(len(train_x), generator=shuffle, device=device)
        start = time.perf_counter()
        alpha = mixup["alpha"] if mixing else None
        progress = f"{variant} {epoch + 1}/{epochs}" if interactive else None
        if graphed is not None:
            losses = graphed.epoch(order, alpha, progress)
        else:
            losses = train_epoch(model, optimizer, train_x, train_y, order, batch_size, alpha, progress)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            raise UserError(f"{variant}: the training loss became {losses[bad[0, 0]].item()} at epoch {epoch + 1}, "
                            f"step {bad[0, 0].item() + 1} of {steps}; lower train.lr (now {train['lr']})")
        eval_loss, eval_acc = evaluate(model, eval_x, eval_y)
        row = {"epoch": epoch + 1, "step": (epoch + 1) * steps, "train_loss": losses.mean().item(),
               "eval_loss": eval_loss, "eval_acc": eval_acc, "lr": optimizer.param_groups[0]["lr"],
               "examples_per_sec": steps * batch_size / seconds, "seconds": seconds}
        print(f"{variant} epoch {row['epoch']}/{epochs}{' (mixup)' if mixing else ''}: "
              f"train loss {row['train_loss']:.4f}, eval loss {eval_loss:.4f}, eval acc {eval_acc:.4f}, "
              f"{row['examples_per_sec']:.0f} img/s, {seconds:.1f} s", flush=True)
        state["rows"].append(row)
        if state["best"] is None or eval_loss < state["best"]["eval_loss"]:
            # Like FastEstimator's ModelSaver: keep the weights with the lowest eval loss.
            state["best"] = {"model": {k: v.clone() for k, v in model.state_dict().items()},
                             "epoch": epoch + 1, "eval_loss": eval_loss, "eval_acc": eval_acc}
        state.update(epoch=epoch + 1, model=model.state_dict(), optimizer=optimizer.state_dict(),
                     torch_rng=torch.get_rng_state(), shuffle_rng=shuffle.get_state())
        if resume_path is not None:
            with atomic_output(resume_path) as tmp:
                torch.save(state, tmp)
    final = {"model": model.state_dict(), "epoch": epochs, "eval_loss": state["rows"][-1]["eval_loss"],
             "eval_acc": state["rows"][-1]["eval_acc"]}
    return state["rows"], state["best"], final


def main():
    variant = sys.argv[1] if len(sys.argv) == 2 else None
    if variant not in paths.VARIANTS:
        raise UserError(f"usage: python -m stages.train {{{'|'.join(paths.VARIANTS)}}}")
    params = load_params("train", *(["mixup"] if variant == "mixup" else []))
    train, mixup = params["train"], params.get("mixup")
    device = resolve_device(train["device"])
    rows, best, final = train_variant(variant, train, mixup, device, resume_path=paths.resume_state(variant))
    summary = {**summarize(rows), "device": device.type}
    for which, checkpoint in (("best", best), ("final", final)):
        with atomic_output(paths.checkpoint(variant, which)) as tmp:
            torch.save({**checkpoint, "model": {k: v.cpu() for k, v in checkpoint["model"].items()}}, tmp)
    with atomic_output(paths.epochs_tsv(variant)) as tmp:
        write_tsv(rows, tmp)
    with atomic_output(paths.summary_json(variant)) as tmp:
        write_summary(summary, tmp)
    paths.resume_state(variant).unlink()
    print(f"{variant}: peak eval acc {summary['peak_eval_acc']:.4f} (epoch {summary['peak_epoch']}), "
          f"final {summary['final_eval_acc']:.4f}; min eval loss {summary['min_eval_loss']:.4f} "
          f"(epoch {summary['min_loss_epoch']}), final {summary['final_eval_loss']:.4f}; "
          f"{summary['train_seconds']:.0f} s training")


if __name__ == "__main__":
    run(main)
