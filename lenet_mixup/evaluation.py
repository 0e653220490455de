"""The one evaluation loop: logits in chunks of EVAL_BATCH images, never mixed, in float32.

The training stages score every epoch with `evaluate`; the evaluate stages use `predict` for the
logits that calibration and the confusion matrix need, and `in_chunks` for FGSM. On the CPU the
chunks are spread over the workers (lenet_mixup.cpu) and combined in their order, so EVAL_BATCH
changes speed and memory, never what is computed.
"""
import torch
import torch.nn.functional as F

from lenet_mixup.cpu import map_in_order

EVAL_BATCH = 1000


def in_chunks(function, model, *tensors):
    """[function(*chunk) for each chunk of EVAL_BATCH rows of the tensors], in order, the model in eval mode."""
    was_training = model.training
    model.eval()
    try:
        chunks = list(zip(*(t.split(EVAL_BATCH) for t in tensors), strict=True))
        return map_in_order(lambda chunk: function(*chunk), chunks, None if tensors[0].device.type == "cpu" else 1)
    finally:
        model.train(was_training)


def predict(model, x):
    """The logits of every image of x."""
    def logits(xs):
        with torch.inference_mode():  # per thread, so inside the function a worker runs
            return model(xs)
    return torch.cat(in_chunks(logits, model, x))


def evaluate(model, x, y):
    """(mean cross-entropy, accuracy) over all of (x, y); one host sync, at the end."""
    def sums(xs, ys):
        with torch.inference_mode():
            logits = model(xs)
            return F.cross_entropy(logits, ys, reduction="sum"), (logits.argmax(1) == ys).sum()
    with torch.inference_mode():
        loss_sum = torch.zeros((), device=x.device)
        correct = torch.zeros((), device=x.device, dtype=torch.long)
        for chunk_loss, chunk_correct in in_chunks(sums, model, x, y):
            loss_sum += chunk_loss
            correct += chunk_correct
    return loss_sum.item() / len(x), correct.item() / len(x)
