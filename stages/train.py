"""Stage `train@<variant>`: python -m stages.train VARIANT

Trains one variant (lenet_mixup/training.py: the loop; lenet_mixup/steps.py: the step; the variant's own
transform in lenet_mixup/variants/) and writes its best and final checkpoints, its per-epoch metrics and
its summary. It reads params `train` and the variant's own section. Each epoch ends with a resume state
in data/resume/ (a killed run picks up after its last complete epoch) and with the metrics so far in
metrics/<variant>/ (lenet_mixup/live.py), so DVC's views follow the run.
"""
import sys

import torch

from lenet_mixup import live, paths, variant
from lenet_mixup.cpu import cores
from lenet_mixup.device import resolve_device
from lenet_mixup.metrics import summarize, write_summary, write_tsv
from lenet_mixup.params import load_params
from lenet_mixup.stage import UserError, atomic_output, run
from lenet_mixup.training import save, train_variant


def main():
    if len(sys.argv) != 2:
        raise UserError(f"usage: python -m stages.train VARIANT (one of {', '.join(variant.available())})")
    name = sys.argv[1]
    module = variant.load(name)
    params = load_params("train", name)
    train = params["train"]
    device = resolve_device(train["device"])
    about = {"device": device.type, "precision": train["precision"]}

    def publish(rows):
        live.publish(name, rows, {**summarize(rows), **about}, train["epochs"])

    try:
        rows, best, final, run_info = train_variant(name, train, params[name], device,
                                                    resume_path=paths.resume_state(name), on_epoch=publish)
    finally:
        live.finish()
    summary = {**summarize(rows), **about, **run_info}
    if device.type == "cpu":  # shards decide the bits; the workers, only the speed
        summary.update(shards=train["shards"], workers=min(cores(), train["shards"]))
    if device.type == "cuda":
        summary["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    for which, checkpoint in (("best", best), ("final", final)):
        with atomic_output(paths.checkpoint(name, which)) as tmp:
            save({**checkpoint, "model": {k: v.cpu() for k, v in checkpoint["model"].items()}}, tmp)
    with atomic_output(paths.epochs_tsv(name)) as tmp:
        write_tsv(rows, tmp)
    with atomic_output(paths.summary_json(name)) as tmp:
        write_summary(summary, tmp)
    paths.resume_state(name).unlink()
    never = run_info.get(variant.epochs_key(module)) == 0
    never = f" (no batch was {module.ACTION}: see the warning above)" if never else ""
    print(f"{name}: peak eval acc {summary['peak_eval_acc']:.4f} (epoch {summary['peak_epoch']}), "
          f"final {summary['final_eval_acc']:.4f}; min eval loss {summary['min_eval_loss']:.4f} "
          f"(epoch {summary['min_loss_epoch']}), final {summary['final_eval_loss']:.4f}; "
          f"{summary['train_seconds']:.0f} s training on the {run_info['train_path']} path{never}")


if __name__ == "__main__":
    run(main)
