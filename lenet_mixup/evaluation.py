"""The one evaluation loop: logits in chunks of EVAL_CHUNK images, never mixed, in float32.

The training stages score every epoch with `evaluate`; the evaluate stages use `predict` for the
logits that calibration and the confusion matrix need, and `in_chunks` for FGSM. On the CPU the
chunks are spread over the workers (lenet_mixup.cpu) and combined in their order. EVAL_CHUNK changes
speed and memory, never the bits (tests/unit/test_cpu.py): each image's logits do not depend on the chunk
it is in, and every sum over images is taken once, over all of them.
"""
import torch
import torch.nn.functional as F

from lenet_mixup.cpu import map_in_order

EVAL_CHUNK = 250  # a few chunks even on a small eval set, for every worker; 29 MiB for the first conv


def in_chunks(function, model, *tensors):
    """[function(*chunk) for each chunk of EVAL_CHUNK rows of the tensors], in order, the model in eval mode."""
    was_training = model.training
    model.eval()
    try:
        chunks = list(zip(*(t.split(EVAL_CHUNK) for t in tensors), strict=True))
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
    def losses_and_hits(xs, ys):
        with torch.inference_mode():
            logits = model(xs)
            return F.cross_entropy(logits, ys, reduction="none"), logits.argmax(1) == ys
    chunks = in_chunks(losses_and_hits, model, x, y)
    with torch.inference_mode():
        losses, hits = torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])
        return losses.sum().item() / len(x), hits.sum().item() / len(x)
