"""Stage `evaluate@<variant>`: python -m stages.evaluate VARIANT

Scores both checkpoints a training stage kept (`final` and `best`, the lowest-eval-loss weights
FastEstimator's ModelSaver kept) on what mixup is claimed to buy: clean accuracy and NLL, FGSM
accuracy at each epsilon, calibration (ECE and a reliability diagram), a confusion matrix, and the
generalization gap (train minus eval accuracy) of the final weights. Always on the whole eval set,
in float32, whatever the training's validation_steps or precision.
"""
import json
import sys

import torch
import torch.nn.functional as F

from lenet_mixup import paths
from lenet_mixup.data import load_split
from lenet_mixup.device import resolve_device
from lenet_mixup.evaluation import predict
from lenet_mixup.metrics import write_rows
from lenet_mixup.model import lenet
from lenet_mixup.params import load_params
from lenet_mixup.robustness import expected_calibration_error, fgsm_accuracies, reliability_bins
from lenet_mixup.stage import UserError, atomic_output, run


def load_model(variant, which, device):
    path = paths.checkpoint(variant, which)
    if not path.is_file():
        raise UserError(f"{path} is missing: run `dvc repro train@{variant}` first")
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    model = lenet().to(device).to(memory_format=torch.channels_last)
    model.load_state_dict(checkpoint["model"])
    return model.eval(), checkpoint["epoch"]


def score(model, x, y, settings):
    logits = predict(model, x)
    return logits, {
        "accuracy": (logits.argmax(1) == y).float().mean().item(),
        "nll": F.cross_entropy(logits, y).item(),
        "ece": expected_calibration_error(logits.softmax(1).cpu(), y.cpu(), settings["ece_bins"]),
        "fgsm_acc": dict(zip([f"{e}/255" for e in settings["fgsm_eps_255"]],
                             fgsm_accuracies(model, x, y, [e / 255 for e in settings["fgsm_eps_255"]]), strict=True)),
    }


def calibration_and_confusion(logits, y, bins, classes):
    """Reliability-diagram rows (non-empty bins) and one (actual, predicted) row per image."""
    confidence, predicted = logits.softmax(1).cpu().max(1)
    reliability = [{"bin_low": lo, "bin_high": hi, "count": n, "confidence": conf, "accuracy": acc}
                   for lo, hi, n, conf, acc in reliability_bins(confidence, predicted == y.cpu(), bins) if n]
    predictions = [{"actual": classes[a], "predicted": classes[p]}
                   for a, p in zip(y.tolist(), predicted.tolist(), strict=True)]
    return reliability, predictions


def main():
    if len(sys.argv) != 2:
        raise UserError("usage: python -m stages.evaluate VARIANT (a variant whose training stage has run)")
    variant = sys.argv[1]
    params = load_params("train", "evaluate")
    settings, device = params["evaluate"], resolve_device(params["train"]["device"])
    eval_x, eval_y = load_split("eval", device)
    results = {}
    for which in ("final", "best"):
        model, epoch = load_model(variant, which, device)
        logits, results[which] = score(model, eval_x, eval_y, settings)
        results[which]["epoch"] = epoch
        if which == "final":
            train_x, train_y = load_split("train", device)
            train_acc = (predict(model, train_x).argmax(1) == train_y).float().mean().item()
            results[which].update(train_accuracy=train_acc, generalization_gap=train_acc - results[which]["accuracy"])
            classes = json.loads((paths.PREPARED / "classes.json").read_text())
            reliability, predictions = calibration_and_confusion(logits, eval_y, settings["ece_bins"], classes)
            del train_x, train_y
        print(f"{variant} {which} weights (epoch {epoch}): " + ", ".join(
            f"{k} {v:.4f}" for k, v in results[which].items() if isinstance(v, float)) +
            ", FGSM accuracy " + ", ".join(f"{k}: {v:.4f}" for k, v in results[which]["fgsm_acc"].items()))
    fgsm_rows = [{"epsilon_255": e, **{f"accuracy_{w}": results[w]["fgsm_acc"][f"{e}/255"] for w in results}}
                 for e in settings["fgsm_eps_255"]]
    with atomic_output(paths.evaluation_json(variant)) as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n")
    with atomic_output(paths.fgsm_tsv(variant)) as tmp:
        write_rows(fgsm_rows, tmp)
    with atomic_output(paths.reliability_tsv(variant)) as tmp:
        write_rows(reliability, tmp)
    with atomic_output(paths.predictions_csv(variant)) as tmp:
        write_rows(predictions, tmp, delimiter=",")


if __name__ == "__main__":
    run(main)
