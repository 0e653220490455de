"""The training step, fast on the CPU and on CUDA; the training loop and the benchmark run it.

CPU: `train_epoch`, an eager loop over a shuffled index into one in-memory channels_last tensor, the
losses kept as tensors until the epoch ends, and `tune_cpu`'s process settings. CUDA: `GraphedEpochs`,
the same step captured once as a CUDA graph and replayed. Both draw for and transform a batch with the
variant's own `draw` and `transform` (lenet_mixup/variant.py), keep the batch in channels_last whatever
the transform returns, and compute what the plain textbook loop computes (tests/unit/test_fast_path.py);
`python -m bench.train_speed` times them. precision "bf16" runs the forward pass and the loss under
bf16 autocast; weights, gradients and the optimizer's state stay float32.
"""
import contextlib

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lenet_mixup.cpu import map_in_order, tune_cpu
from lenet_mixup.model import lenet
from lenet_mixup.optim import make_optimizer


def new_model_and_optimizer(device, train):
    """LeNet in channels_last (the faster conv layout) and the optimizer (lenet_mixup.optim)."""
    model = lenet().to(device).to(memory_format=torch.channels_last)
    return model, make_optimizer(model, train, device)


def mixed_loss(logits, y, weight, partner=None):
    """The loss of a batch whose images carry `weight` of their own label and the rest of their partner's.

    `partner` holds the labels of the images mixed in, roll(y, 1); a piece of a batch cut after mixing
    (train_step) passes its own piece of them. A 0-d weight, one for the batch, weights the two batch means
    as the tutorial's MixUpLoss does (with weight 1 it is exactly the plain cross-entropy); an (N,) weight,
    one per image, weights each image's two losses before the mean.
    """
    partner = y.roll(1, dims=0) if partner is None else partner
    if weight.dim() == 0:
        return weight * F.cross_entropy(logits, y) + (1 - weight) * F.cross_entropy(logits, partner)
    own, other = F.cross_entropy(logits, y, reduction="none"), F.cross_entropy(logits, partner, reduction="none")
    return (weight * own + (1 - weight) * other).mean()


def batch_loss(logits, y, weight, partner=None):
    """The plain cross-entropy when every image keeps its own label (weight None), else the mixed loss."""
    return F.cross_entropy(logits, y) if weight is None else mixed_loss(logits, y, weight, partner)


def autocast(device, precision, graphed=False):
    """bf16 autocast for `precision` "bf16", nothing for "fp32".

    Inside a CUDA graph the autocast cache must be off (PyTorch's CUDA graphs notes): a cached
    bf16 copy of a weight would be captured once and never follow the weight's updates.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, cache_enabled=not graphed)


def train_step(model, optimizer, x, y, augment=None, precision="fp32", shards=1, workers=None):
    """One optimizer step, on the batch as `augment` transforms it (x -> (x, label weight), as
    lenet_mixup.variant.augmenter makes it) when given; returns the loss, with no host sync.

    The batch is cut into `shards` fixed pieces (lenet_mixup.cpu): each piece's forward and backward
    run on one thread, on whichever worker is free, and the gradients are summed in the pieces' order,
    so the result depends on `shards` and not on the workers. Each piece's loss is its mean weighted by
    its share of the batch, so the pieces add up to the batch's mean loss; one shard is the plain step.
    """
    partner, weight = y.roll(1, dims=0), None
    if augment is not None:
        x, weight = augment(x)  # a transform may pair images across the whole batch, so it comes before the cut
        x = x.contiguous(memory_format=torch.channels_last)  # the conv layout, whatever the transform returned
    weights = weight.tensor_split(shards) if weight is not None and weight.dim() else [weight] * shards
    params = list(model.parameters())
    pieces = zip(x.tensor_split(shards), y.tensor_split(shards), partner.tensor_split(shards), weights, strict=True)

    def piece_gradients(piece):
        xs, ys, partners, piece_weight = piece
        with autocast(x.device, precision):
            loss = batch_loss(model(xs), ys, piece_weight, partners) * (len(xs) / len(x))
        return loss.detach(), torch.autograd.grad(loss, params)

    results = map_in_order(piece_gradients, pieces, workers)
    loss, grads = results[0][0], list(results[0][1])
    for piece_loss, piece_grads in results[1:]:
        loss = loss + piece_loss
        torch._foreach_add_(grads, piece_grads)
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    optimizer.step()
    return loss


def train_epoch(model, optimizer, train_x, train_y, order, batch_size, steps, augment=None,
                precision="fp32", progress=None, shards=1, workers=None):
    """`steps` steps over `order` in batches, each transformed by `augment` when given (train_step).

    Returns the per-step losses, on the device; with `progress` (a label) a tqdm bar shows the
    running loss. This is the CPU path (and the reference for the CUDA one, GraphedEpochs).
    """
    tune_cpu()
    losses = torch.zeros(steps, device=train_x.device)
    for step in _progress(0, steps, progress, losses):
        idx = order[step * batch_size:(step + 1) * batch_size]
        losses[step] = train_step(model, optimizer, train_x[idx], train_y[idx], augment, precision, shards, workers)
    return losses


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
    that the host refills once per epoch: the shuffled order, whether the epoch transforms (`active`),
    the per-step losses and a step counter that the step itself advances. The step draws with the
    variant's `draw` and transforms with its `transform` (lenet_mixup/variant.py) inside the graph, so
    numbers drawn per image are drawn on the GPU at every replay. One graph serves plain epochs too: there
    the step keeps the batch and its labels (torch.where on `active`: the very pixels, weight 1, so
    1 * CE(y) + 0 * CE(y_prev) = CE(y)). The first WARMUP steps run eagerly on a side stream (the optimizer
    makes its state on its first step), as torch.cuda.graph's documentation asks. If capture fails the
    same step runs eagerly, still with no host sync inside the epoch; `path` says which ran
    ("cuda-graph" or "cuda-eager") and `capture_error` why capture failed.

    The learning rate is captured as it is at capture time: the graph replays the same kernels with the
    same scalar arguments, so changing the lr afterwards (a schedule) would silently do nothing. This
    pipeline's lr is constant, as the tutorial's; a schedule would need the lr in a device tensor.
    """
    WARMUP = 3

    def __init__(self, model, optimizer, train_x, train_y, batch_size, steps, variant, params, precision="fp32"):
        device = train_x.device
        self.model, self.optimizer, self.x, self.y = model, optimizer, train_x, train_y
        self.batch_size, self.steps, self.precision = batch_size, steps, precision
        self.variant, self.params = variant, params
        self.order = torch.zeros(len(train_x), dtype=torch.long, device=device)
        self.active = torch.zeros((), dtype=torch.bool, device=device)
        self.losses = torch.zeros(steps, device=device)
        self.counter = torch.zeros(1, dtype=torch.long, device=device)
        self.offsets = torch.arange(batch_size, device=device)
        self.graph, self.capture_error = None, None

    @property
    def path(self):
        return "cuda-eager" if self.capture_error else "cuda-graph"

    def step(self):
        """Train on batch number `counter` of the order, record its loss, advance the counter."""
        idx = self.order.index_select(0, self.counter * self.batch_size + self.offsets)
        x, y = self.x[idx], self.y[idx]
        draw = self.variant.draw(self.params, x.shape, x.device)
        with autocast(x.device, self.precision, graphed=True):
            transformed, weight = self.variant.transform(x, draw, self.params)
            x = torch.where(self.active, transformed, x).contiguous(memory_format=torch.channels_last)
            weight = None if weight is None else torch.where(self.active, weight, 1.0)
            loss = batch_loss(self.model(x), y, weight)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.losses.index_copy_(0, self.counter, loss.detach().float().unsqueeze(0))
        self.counter += 1

    def epoch(self, order, active=False, progress=None):
        """Train one epoch in the given order, transformed by the variant if `active`; returns per-step losses."""
        self.order.copy_(order)
        self.active.fill_(active)
        self.counter.zero_()
        done = self.capture() if self.graph is None and self.capture_error is None else 0
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
        main = torch.cuda.current_stream()
        main.wait_stream(side)
        try:
            graph = torch.cuda.CUDAGraph()
            self.optimizer.zero_grad()
            with torch.cuda.graph(graph):
                self.step()
            self.graph = graph
        except RuntimeError as e:
            torch.cuda.set_stream(main)  # a failure inside capture_end can leave the capture stream current
            cause = e.__context__ if isinstance(e.__context__, RuntimeError) else e  # the first error, not its echo
            self.capture_error = (str(cause).splitlines() or [type(cause).__name__])[0]
        return warmup
