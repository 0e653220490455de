"""The training step, fast on the CPU and on CUDA; the training loop and the benchmark run it.

CPU: `train_epoch`, an eager loop over a shuffled index into one in-memory channels_last tensor, the
losses kept as tensors until the epoch ends, and `tune_cpu`'s process settings. CUDA: `GraphedEpochs`,
the same step captured once as a CUDA graph and replayed. Both mix a batch with the variant's own `mix`
(lenet_mixup/variant.py) and compute what the plain textbook loop computes (tests/unit/test_fast_path.py);
`python -m bench.train_speed` times them. precision "bf16" runs the forward pass and the loss under
bf16 autocast; weights, gradients and the optimizer's state stay float32.
"""
import contextlib
import functools

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
    """weight * CE(logits, y) + (1 - weight) * CE(logits, partner), batch mean: the loss of a mixed batch.

    `partner` holds the labels of the images mixed in, roll(y, 1); a piece of a batch cut after mixing
    (train_step) passes its own piece of them. With weight 1 it is exactly the plain cross-entropy.
    """
    partner = y.roll(1, dims=0) if partner is None else partner
    return weight * F.cross_entropy(logits, y) + (1 - weight) * F.cross_entropy(logits, partner)


def autocast(device, precision, graphed=False):
    """bf16 autocast for `precision` "bf16", nothing for "fp32".

    Inside a CUDA graph the autocast cache must be off (PyTorch's CUDA graphs notes): a cached
    bf16 copy of a weight would be captured once and never follow the weight's updates.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, cache_enabled=not graphed)


def train_step(model, optimizer, x, y, mix=None, precision="fp32", shards=1, workers=None):
    """One optimizer step, on the batch as `mix` transforms it (x -> (x, weight)) when given; returns the
    loss, with no host sync.

    The batch is cut into `shards` fixed pieces (lenet_mixup.cpu): each piece's forward and backward
    run on one thread, on whichever worker is free, and the gradients are summed in the pieces' order,
    so the result depends on `shards` and not on the workers. Each piece's loss is its mean weighted by
    its share of the batch, so the pieces add up to the batch's mean loss; one shard is the plain step.
    """
    partner, weight = y.roll(1, dims=0), None
    if mix is not None:
        x, weight = mix(x)  # mixing pairs images across the whole batch, so it comes before the cut
    params = list(model.parameters())
    pieces = zip(x.tensor_split(shards), y.tensor_split(shards), partner.tensor_split(shards), strict=True)

    def piece_gradients(piece):
        xs, ys, partners = piece
        with autocast(x.device, precision):
            logits = model(xs)
            loss = mixed_loss(logits, ys, weight, partners) if mix is not None else F.cross_entropy(logits, ys)
            loss = loss * (len(xs) / len(x))
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


def train_epoch(model, optimizer, train_x, train_y, order, batch_size, steps, mix=None, draws=None,
                precision="fp32", progress=None, shards=1, workers=None):
    """`steps` steps over `order` in batches; when mixing, batch `step` goes through mix(x, draws[step]).

    Returns the per-step losses, on the device; with `progress` (a label) a tqdm bar shows the
    running loss. This is the CPU path (and the reference for the CUDA one, GraphedEpochs).
    """
    tune_cpu()
    losses = torch.zeros(steps, device=train_x.device)
    for step in _progress(0, steps, progress, losses):
        idx = order[step * batch_size:(step + 1) * batch_size]
        transform = functools.partial(mix, draw=draws[step]) if mix is not None else None
        losses[step] = train_step(model, optimizer, train_x[idx], train_y[idx], transform, precision, shards, workers)
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
    that the host refills once per epoch: the shuffled order, the variant's draws (a row per step), the
    per-step losses and a step counter that the step itself advances. The step mixes with the variant's
    `mix` (lenet_mixup/variant.py), inside the graph; plain epochs use the variant's NO_MIX draws, with
    which the step is exactly the plain one (the batch as it is, weight 1: 1 * CE(y) + 0 * CE(y_prev) =
    CE(y)), so one graph serves both. The first WARMUP steps run eagerly on a side stream (the optimizer
    makes its state on its first step), as torch.cuda.graph's documentation asks. If capture fails the
    same step runs eagerly, still with no host sync inside the epoch; `path` says which ran
    ("cuda-graph" or "cuda-eager") and `capture_error` why capture failed.

    The learning rate is captured as it is at capture time: the graph replays the same kernels with the
    same scalar arguments, so changing the lr afterwards (a schedule) would silently do nothing. This
    pipeline's lr is constant, as the tutorial's; a schedule would need the lr in a device tensor.
    """
    WARMUP = 3

    def __init__(self, model, optimizer, train_x, train_y, batch_size, steps, variant, precision="fp32"):
        device = train_x.device
        self.model, self.optimizer, self.x, self.y = model, optimizer, train_x, train_y
        self.batch_size, self.steps, self.variant, self.precision = batch_size, steps, variant, precision
        self.order = torch.zeros(len(train_x), dtype=torch.long, device=device)
        self.no_mix = torch.tensor(variant.NO_MIX, dtype=torch.float32, device=device).expand(steps, -1)
        self.draws = self.no_mix.clone()  # float32, as the variants draw them
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
        draw = self.draws.index_select(0, self.counter).squeeze(0)
        with autocast(x.device, self.precision, graphed=True):
            x, weight = self.variant.mix(x, draw)
            loss = mixed_loss(self.model(x), y, weight)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.losses.index_copy_(0, self.counter, loss.detach().float().unsqueeze(0))
        self.counter += 1

    def epoch(self, order, draws=None, progress=None):
        """Train one epoch in the given order, with these draws (None: plain); returns per-step losses."""
        self.order.copy_(order)
        self.draws.copy_(draws if draws is not None else self.no_mix)
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
