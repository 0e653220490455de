"""The training step, fast on the CPU and on CUDA; the training loop and the benchmark run it.

CPU: `train_epoch`, an eager loop over a shuffled index into one in-memory channels_last tensor,
fused Adam (FusedAdam), the losses kept as tensors until the epoch ends, and `tune_cpu`'s process settings.
CUDA: `GraphedEpochs`, the same step captured once as a CUDA graph and replayed. Both compute what
the plain textbook loop computes (tests/test_fast_path.py); `python -m bench.train_speed` times them.
precision "bf16" runs the forward pass and the loss under bf16 autocast; weights, gradients and
Adam stay float32.
"""
import contextlib

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lenet_mixup.cpu import map_in_order, tune_cpu
from lenet_mixup.mixup import mixup_batch, mixup_loss
from lenet_mixup.model import lenet


def new_model_and_optimizer(device, lr):
    """LeNet in channels_last (the faster conv layout) and Adam as Keras ran it (eps 1e-7)."""
    model = lenet().to(device).to(memory_format=torch.channels_last)
    return model, FusedAdam(model.parameters(), lr, betas=(0.9, 0.999), eps=1e-7)


class FusedAdam:
    """Adam as `torch.optim.Adam(fused=True)` computes it: the same kernel with the same arguments, so the
    same bits (tests/test_fast_path.py), one kernel per step on the CPU and on CUDA, where a CUDA graph
    captures it (the step counts live on the device, as with `capturable=True`).

    Why not torch.optim: every torch.optim optimizer imports torch._dynamo, torch.compile's tracer,
    which this project never uses, as it is made. That import took a second of every training stage's
    start-up, a third of a stage on a tiny archive. The state is made at the first step, as
    torch.optim makes it, from the parameters as they are then.
    """

    def __init__(self, params, lr, betas, eps):
        self.params, self.lr, self.betas, self.eps = list(params), lr, betas, eps
        self.state = None  # {"step", "exp_avg", "exp_avg_sq"}: one tensor per parameter each

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        if self.state is None:
            self.state = {"step": [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params],
                          "exp_avg": [torch.zeros_like(p) for p in self.params],
                          "exp_avg_sq": [torch.zeros_like(p) for p in self.params]}
        torch._foreach_add_(self.state["step"], 1)
        torch._fused_adam_(self.params, [p.grad for p in self.params], self.state["exp_avg"],
                           self.state["exp_avg_sq"], [], self.state["step"], amsgrad=False, lr=self.lr,
                           beta1=self.betas[0], beta2=self.betas[1], weight_decay=0.0, eps=self.eps,
                           maximize=False, grad_scale=None, found_inf=None)

    def state_dict(self):
        return {"lr": self.lr, "betas": self.betas, "eps": self.eps, "state": self.state}

    def load_state_dict(self, saved):
        self.lr, self.betas, self.eps = saved["lr"], tuple(saved["betas"]), saved["eps"]
        self.state = None if saved["state"] is None else \
            {k: [t.to(p.device) for t, p in zip(v, self.params, strict=True)] for k, v in saved["state"].items()}


def autocast(device, precision, graphed=False):
    """bf16 autocast for `precision` "bf16", nothing for "fp32".

    Inside a CUDA graph the autocast cache must be off (PyTorch's CUDA graphs notes): a cached
    bf16 copy of a weight would be captured once and never follow the weight's updates.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, cache_enabled=not graphed)


def train_step(model, optimizer, x, y, lam=None, precision="fp32", shards=1, workers=None):
    """One optimizer step, mixing with `lam` (a 0-d tensor) when given; returns the loss, no host sync.

    The batch is cut into `shards` fixed pieces (lenet_mixup.cpu): each piece's forward and backward
    run on one thread, on whichever worker is free, and the gradients are summed in the pieces' order,
    so the result depends on `shards` and not on the workers. Each piece's loss is its mean weighted by
    its share of the batch, so the pieces add up to the batch's mean loss; one shard is the plain step.
    """
    partner = y.roll(1, dims=0)
    if lam is not None:
        x = mixup_batch(x, lam)  # mixing pairs images across the whole batch, so it comes before the cut
    params = list(model.parameters())
    pieces = zip(x.tensor_split(shards), y.tensor_split(shards), partner.tensor_split(shards), strict=True)

    def piece_gradients(piece):
        xs, ys, partners = piece
        with autocast(x.device, precision):
            logits = model(xs)
            loss = mixup_loss(logits, ys, lam, partners) if lam is not None else F.cross_entropy(logits, ys)
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


def train_epoch(model, optimizer, train_x, train_y, order, batch_size, steps, lams=None, precision="fp32",
                progress=None, shards=1, workers=None):
    """`steps` steps over `order` in batches, with lams[step] as each batch's lambda when mixing.

    Returns the per-step losses, on the device; with `progress` (a label) a tqdm bar shows the
    running loss. This is the CPU path (and the reference for the CUDA one, GraphedEpochs).
    """
    tune_cpu()
    losses = torch.zeros(steps, device=train_x.device)
    for step in _progress(0, steps, progress, losses):
        idx = order[step * batch_size:(step + 1) * batch_size]
        lam = lams[step] if lams is not None else None
        losses[step] = train_step(model, optimizer, train_x[idx], train_y[idx], lam, precision, shards, workers)
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
    that the host refills once per epoch: the shuffled order, one lambda per step, the per-step losses
    and a step counter that the step itself advances. Plain epochs use lambda = 1, which is exactly the
    plain step (1 * x + 0 * x_prev = x and 1 * CE(y) + 0 * CE(y_prev) = CE(y)), so one graph serves
    both. The first WARMUP steps run eagerly on a side stream (Adam makes its state on its first step),
    as torch.cuda.graph's documentation asks. If capture fails the same step runs eagerly, still with
    no host sync inside the epoch; `path` says which ran ("cuda-graph" or "cuda-eager") and
    `capture_error` why capture failed.

    Adam's learning rate is captured as it is at capture time: the graph replays the same kernels with
    the same scalar arguments, so changing the lr afterwards (a schedule) would silently do nothing.
    This pipeline's lr is constant, as the tutorial's; a schedule would need the lr in a device tensor.
    """
    WARMUP = 3

    def __init__(self, model, optimizer, train_x, train_y, batch_size, steps, precision="fp32"):
        device = train_x.device
        self.model, self.optimizer, self.x, self.y = model, optimizer, train_x, train_y
        self.batch_size, self.steps, self.precision = batch_size, steps, precision
        self.order = torch.zeros(len(train_x), dtype=torch.long, device=device)
        self.lams = torch.ones(steps, device=device)  # float32, as sample_lambdas draws them
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
        lam = self.lams.index_select(0, self.counter).squeeze(0)
        with autocast(x.device, self.precision, graphed=True):
            loss = mixup_loss(self.model(mixup_batch(x, lam)), y, lam)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.losses.index_copy_(0, self.counter, loss.detach().float().unsqueeze(0))
        self.counter += 1

    def epoch(self, order, lams=None, progress=None):
        """Train one epoch in the given order, with these lambdas (None: plain); returns per-step losses."""
        self.order.copy_(order)
        self.lams.copy_(lams) if lams is not None else self.lams.fill_(1.0)
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
