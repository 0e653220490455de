"""Stages `train_baseline` and `train_mixup`: python -m stages.train {baseline|mixup}

FastEstimator's LeNet tutorial, one variant per stage: Adam (lr from params, betas 0.9/0.999,
eps 1e-7 as in Keras), batch `train.batch_size`, reshuffled every epoch, sparse cross-entropy,
evaluation on every eval image after each epoch. The mixup variant mixes from epoch `warmup` on.

The whole prepared set lives in memory (on the GPU when there is one) as one tensor; the steps
themselves (stages/steps.py) never wait on the host inside an epoch. Each epoch ends with a resume
checkpoint: a killed run picks up where it was.
"""
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stages import paths
from stages.metrics import summarize, write_summary, write_tsv
from stages.mixup import is_mixup_epoch
from stages.params import load_params
from stages.stage import UserError, atomic_output, run
from stages.steps import GraphedEpochs, new_model_and_optimizer, train_epoch

EVAL_BATCH = 1000
SOURCES = [Path(__file__).with_name(n) for n in ("train.py", "steps.py", "model.py", "mixup.py")]


def resolve_device(name):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device} ({label})")
    return device


def load_split(split, device):
    """Images as a channels_last tensor (the faster conv layout on CPU), labels as int64."""
    for name in (f"{split}_x", f"{split}_y"):
        if not paths.prepared_file(name).is_file():
            raise UserError(f"{paths.prepared_file(name)} is missing: run `dvc repro prepare`")
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
