"""Stages `train_baseline` and `train_mixup`: python -m stages.train {baseline|mixup}

Trains one variant (lenet_mixup/training.py: the loop; lenet_mixup/steps.py: the step) and writes
its best and final checkpoints, its per-epoch metrics and its summary. Each epoch ends with a resume
state in data/resume/: a killed run picks up after its last complete epoch.
"""
import sys

import torch

from lenet_mixup import paths
from lenet_mixup.cpu import cores
from lenet_mixup.device import resolve_device
from lenet_mixup.metrics import summarize, write_summary, write_tsv
from lenet_mixup.params import load_params
from lenet_mixup.stage import UserError, atomic_output, run
from lenet_mixup.training import save, train_variant


def main():
    variant = sys.argv[1] if len(sys.argv) == 2 else None
    if variant not in paths.VARIANTS:
        raise UserError(f"usage: python -m stages.train {{{'|'.join(paths.VARIANTS)}}}")
    params = load_params("train", *(["mixup"] if variant == "mixup" else []))
    train, mixup = params["train"], params.get("mixup")
    device = resolve_device(train["device"])
    rows, best, final, path = train_variant(variant, train, mixup, device, resume_path=paths.resume_state(variant))
    summary = {**summarize(rows), "device": device.type, "precision": train["precision"], **path}
    if device.type == "cpu":  # shards decide the bits; the workers, only the speed
        summary.update(shards=train["shards"], workers=min(cores(), train["shards"]))
    if device.type == "cuda":
        summary["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    for which, checkpoint in (("best", best), ("final", final)):
        with atomic_output(paths.checkpoint(variant, which)) as tmp:
            save({**checkpoint, "model": {k: v.cpu() for k, v in checkpoint["model"].items()}}, tmp)
    with atomic_output(paths.epochs_tsv(variant)) as tmp:
        write_tsv(rows, tmp)
    with atomic_output(paths.summary_json(variant)) as tmp:
        write_summary(summary, tmp)
    paths.resume_state(variant).unlink()
    print(f"{variant}: peak eval acc {summary['peak_eval_acc']:.4f} (epoch {summary['peak_epoch']}), "
          f"final {summary['final_eval_acc']:.4f}; min eval loss {summary['min_eval_loss']:.4f} "
          f"(epoch {summary['min_loss_epoch']}), final {summary['final_eval_loss']:.4f}; "
          f"{summary['train_seconds']:.0f} s training on the {path['train_path']} path")


if __name__ == "__main__":
    run(main)
