"""The training loop of one variant, read top to bottom, and its resume state.

FastEstimator's LeNet tutorial: Adam (lenet_mixup/optim.py), batch `train.batch_size`, reshuffled every
epoch, sparse cross-entropy, an evaluation after every epoch. A variant (lenet_mixup/variant.py) transforms
its batches from the epoch its params say on (mixup, cutmix, crop_flip: after `warmup` plain epochs).
`train.steps_per_epoch` and `train.validation_steps` (FastEstimator's knobs of the same names) cap the
training batches per epoch and the eval batches (of `train.batch_size` images) per evaluation; null means all.
"""
import hashlib
import io
import json
import sys
import time
from pathlib import Path

import torch

from lenet_mixup import paths, variant
from lenet_mixup.cpu import warn_if_bf16_is_emulated
from lenet_mixup.data import load_split
from lenet_mixup.evaluation import evaluate
from lenet_mixup.stage import UserError, atomic_output
from lenet_mixup.steps import GraphedEpochs, new_model_and_optimizer, train_epoch

# What a resume state must match besides params and data: the library, the stage script and the variant.
ROOT = Path(__file__).parents[1]
SOURCES = sorted(Path(__file__).parent.glob("*.py")) + [ROOT / "stages" / "train.py"]


def fingerprint(config, device):
    """The params, the device type that trains (a CPU state resumed on CUDA could not be captured
    as a graph), the training code and the prepared data (size and time of each array)."""
    h = hashlib.sha256(json.dumps({**config, "device_type": device.type}, sort_keys=True).encode())
    for source in SOURCES + [ROOT / variant.source(config["variant"])]:
        h.update(source.read_bytes())
    for name in ("train_x", "train_y", "eval_x", "eval_y"):
        stat = paths.prepared_file(name).stat()
        h.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return h.hexdigest()


def steps_per_epoch(train, images):
    """Full batches per epoch (the last partial batch is dropped, as FastEstimator did), capped."""
    if train["batch_size"] > images:
        raise UserError(f"train.batch_size = {train['batch_size']} is larger than the {images} training images; "
                        "lower train.batch_size")
    full = images // train["batch_size"]
    return min(full, train["steps_per_epoch"]) if train["steps_per_epoch"] else full


def train_variant(name, train, params, device, resume_path=None, on_epoch=None):
    """Train variant `name` with its `params` (its section of params.yaml); returns (per-epoch rows, best
    checkpoint, final checkpoint, what summary.json says of the run).

    With `resume_path`, the state is saved there after every epoch, and a saved state from the same
    params, device type, code and data is resumed from. on_epoch(rows) is called with the rows so far
    after every epoch's state is saved, and at once with the rows a resumed state restored. The run's
    dict says which training path ran, `train_path` "cpu", "cuda-graph" or "cuda-eager" (with
    `capture_error` when capture failed), and, for a variant that transforms, in how many epochs it did,
    under its own words (variant.epochs_key: `mixed_epochs` for mixup).
    """
    transform = variant.load(name)
    train_x, train_y = load_split("train", device)
    eval_x, eval_y = load_split("eval", device)
    if train["validation_steps"]:
        eval_x, eval_y = (t[:train["validation_steps"] * train["batch_size"]] for t in (eval_x, eval_y))
    batch_size, epochs, precision = train["batch_size"], train["epochs"], train["precision"]
    warn_if_bf16_is_emulated(precision, device)
    steps = steps_per_epoch(train, len(train_x))
    if train["shards"] > batch_size:
        raise UserError(f"train.shards = {train['shards']} is more than the {batch_size} images of a batch "
                        "(train.batch_size); lower train.shards")
    first_active = transform.first_epoch(params)
    if first_active is not None and first_active >= epochs:
        print(f"warning: no batch of {name} is {transform.ACTION} in this run: it starts after {first_active} plain "
              f"epochs ({name}: {params}) and train.epochs is {epochs}; this run trains what the baseline does",
              flush=True)
    torch.manual_seed(train["seed"])  # the weights, and the variant's draws (CPU or CUDA generator)
    shuffle = torch.Generator(device=device).manual_seed(train["seed"])
    model, optimizer = new_model_and_optimizer(device, train)
    state = {"fingerprint": fingerprint({"variant": name, "train": train, "params": params}, device),
             "epoch": 0, "rows": [], "best": None}
    saved = load_resume(resume_path, state["fingerprint"]) if resume_path and resume_path.exists() else None
    if saved is not None:
        state = saved
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        shuffle.set_state(saved["shuffle_rng"])
        torch.set_rng_state(saved["cpu_rng"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(saved["cuda_rng"], device)
        print(f"resuming {name} after epoch {saved['epoch']} from {resume_path}", flush=True)
        if on_epoch is not None and state["rows"]:
            on_epoch(state["rows"])

    graphed = GraphedEpochs(model, optimizer, train_x, train_y, batch_size, steps, transform, params, precision) \
        if device.type == "cuda" else None
    augment = variant.augmenter(transform, params)
    interactive, first_epoch = sys.stderr.isatty(), state["epoch"]
    for epoch in range(first_epoch, epochs):
        active = first_active is not None and epoch >= first_active
        order = torch.randperm(len(train_x), generator=shuffle, device=device)
        progress = f"{name} {epoch + 1}/{epochs}" if interactive else None
        start = time.perf_counter()
        if graphed is not None:
            losses = graphed.epoch(order, active, progress)
            torch.cuda.synchronize()
        else:
            losses = train_epoch(model, optimizer, train_x, train_y, order, batch_size, steps,
                                 augment if active else None, precision, progress, train["shards"])
        seconds = time.perf_counter() - start
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            raise UserError(f"{name}: the training loss became {losses[bad[0, 0]].item()} at epoch {epoch + 1}, "
                            f"step {bad[0, 0].item() + 1} of {steps}; lower train.lr (now {train['lr']})")
        eval_loss, eval_acc = evaluate(model, eval_x, eval_y)
        row = {"epoch": epoch + 1, "step": (epoch + 1) * steps, "train_loss": losses.mean().item(),
               "eval_loss": eval_loss, "eval_acc": eval_acc, "lr": train["lr"],
               "examples_per_sec": steps * batch_size / seconds, "seconds": seconds,
               "train_steps": steps, "eval_images": len(eval_x)}
        print(f"{name} epoch {row['epoch']}/{epochs}{f' ({transform.ACTION})' if active else ''}: "
              f"train loss {row['train_loss']:.4f}, eval loss {eval_loss:.4f}, eval acc {eval_acc:.4f}, "
              f"{row['examples_per_sec']:.0f} img/s, {seconds:.1f} s", flush=True)
        if epoch == first_epoch:  # the path is known once the first epoch has captured its graph
            print(f"training path: {describe_path(graphed)}", flush=True)
        state["rows"].append(row)
        if state["best"] is None or eval_loss < state["best"]["eval_loss"]:
            # Like FastEstimator's ModelSaver: keep the weights with the lowest eval loss.
            state["best"] = {"model": {k: v.clone() for k, v in model.state_dict().items()},
                             "epoch": epoch + 1, "eval_loss": eval_loss, "eval_acc": eval_acc}
        state.update(epoch=epoch + 1, model=model.state_dict(), optimizer=optimizer.state_dict(),
                     **rng_states(shuffle, device))
        if resume_path is not None:
            with atomic_output(resume_path) as tmp:
                save(state, tmp)
        if on_epoch is not None:
            on_epoch(state["rows"])
    final = {"model": model.state_dict(), "epoch": epochs, "eval_loss": state["rows"][-1]["eval_loss"],
             "eval_acc": state["rows"][-1]["eval_acc"]}
    run = {"train_path": graphed.path if graphed is not None else "cpu"}
    if graphed is not None and graphed.capture_error:
        run["capture_error"] = graphed.capture_error
    if first_active is not None:
        run[variant.epochs_key(transform)] = max(0, epochs - first_active)
    return state["rows"], state["best"], final, run


def save(obj, path):
    """torch.save through memory, then one plain write. Straight to a full disk, torch.save fails deep in
    its zip writer (`unexpected pos 5248 vs 5136`); a plain write fails with the OS's own error, which
    atomic_output turns into one line naming the file, the cause and the remedy."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    Path(path).write_bytes(buffer.getbuffer())


def describe_path(graphed):
    """Which training path runs: "cpu", "cuda-graph", or "cuda-eager" with the reason capture failed."""
    if graphed is None:
        return "cpu"
    return graphed.path + (f" (CUDA graph capture failed: {graphed.capture_error})" if graphed.capture_error else "")


def rng_states(shuffle, device):
    """Every generator a run draws from: the shuffle's, and the default one of the training device
    (a variant's draws come from the CUDA generator on a GPU, from the CPU one otherwise)."""
    states = {"shuffle_rng": shuffle.get_state(), "cpu_rng": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda_rng"] = torch.cuda.get_rng_state(device)
    return states


def load_resume(path, fingerprint):
    """The state saved at `path` if it was written for this fingerprint, else None, saying why.

    An unreadable file (a machine that crashed mid-write, a full disk) is moved aside with one line
    saying so, and training starts from the beginning instead of failing until someone deletes it.
    """
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)  # generator states must stay on the CPU
        if not isinstance(saved, dict) or "fingerprint" not in saved:
            raise ValueError("not a resume state")
        if saved["fingerprint"] == fingerprint and (missing := RESUME_KEYS - set(saved)):
            raise ValueError(f"it lacks {', '.join(sorted(missing))}")
    except Exception as e:  # noqa: BLE001 - whatever makes the file unusable, the remedy is the same
        aside = path.with_name(path.name + ".unreadable")
        path.replace(aside)
        reason = (str(e).splitlines() or [type(e).__name__])[0][:120]
        print(f"{path} is unreadable ({reason}); moved it to {aside}, training starts from the beginning", flush=True)
        return None
    if saved["fingerprint"] != fingerprint:
        print(f"ignoring {path}: it was written for other params, device, code or data", flush=True)
        return None
    return saved


RESUME_KEYS = {"fingerprint", "epoch", "rows", "best", "model", "optimizer", "shuffle_rng", "cpu_rng"}
