"""The one evaluation loop: logits in batches of EVAL_BATCH, never mixed, in float32.

The training stages score every epoch with `evaluate`; the evaluate stages use `predict` for the
logits that calibration, the confusion matrix and FGSM need. EVAL_BATCH changes speed and memory,
not what is computed.
"""
import torch
import torch.nn.functional as F

EVAL_BATCH = 1000


@torch.inference_mode()
def _batches(model, x):
    was_training = model.training
    model.eval()
    for i in range(0, len(x), EVAL_BATCH):
        yield slice(i, i + EVAL_BATCH), model(x[i:i + EVAL_BATCH])
    model.train(was_training)


def predict(model, x):
    """The logits of every image of x."""
    return torch.cat([logits for _, logits in _batches(model, x)])


@torch.inference_mode()
def evaluate(model, x, y):
    """(mean cross-entropy, accuracy) over all of (x, y); one host sync, at the end."""
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for batch, logits in _batches(model, x):
        loss_sum += F.cross_entropy(logits, y[batch], reduction="sum")
        correct += (logits.argmax(1) == y[batch]).sum()
    return loss_sum.item() / len(x), correct.item() / len(x)
