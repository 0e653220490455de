"""The project's fast training path computes what the plain textbook loop computes, for every variant.

Fast: lenet_mixup.steps as the training stages run it (channels_last model and images, train_epoch's shuffled
gather, the batch cut into shards). Plain: an NCHW model, one step at a time on x[idx], the variant's `draw`
and `transform`, the label-weighted loss written out. Both step the optimizer `make_optimizer` builds
(lenet_mixup/optim.py), whichever it is: what is compared is the loop. Same initial weights, same order, same
draws (the generator seeded alike before each epoch). All on the CPU; the last tests run the step the CUDA path
captures (GraphedEpochs), eagerly, on the CPU, through plain and transformed epochs of every variant.

Twenty float32 steps do not agree to float tolerance, whatever the code: Adam divides each gradient by
its own running magnitude, so a weight whose gradient is near zero moves by ~lr in a direction set by
rounding, and the two runs drift apart (measured for Adam: losses up to 2e-3 apart after 20
steps, 1.5e-4 even between fused and unfused Adam on one layout). So the 20 steps run in float64, where rounding
is far below the tolerance and a difference would be a difference in what is computed (the batch,
the draw, the loss, the update), and one float32 step checks the float32 kernels the stages use.
"""
import pytest
import torch
import torch.nn.functional as F

from lenet_mixup import steps, variant
from lenet_mixup.model import lenet
from lenet_mixup.optim import make_optimizer
from tests.helpers import TEST_PARAMS, variant_params

STEPS, BATCH = 20, 50
TRAIN = TEST_PARAMS["train"]
CPU = torch.device("cpu")
# The plain path, and every variant transforming every batch.
CASES = [None, *variant.available()]
IDS = ["plain", *(f"{name}-transformed" for name in variant.available())]


@pytest.fixture(autouse=True)
def one_thread():
    """Quicker on a busy 2-core machine (threads wait on each other there), and the same result."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def data(steps, dtype):
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(steps * BATCH + 30, 3, 32, 32, generator=generator, dtype=dtype)  # 30 over: dropped
    y = torch.randint(0, 10, (len(x),), generator=generator)
    return x, y, torch.randperm(len(x), generator=generator)


def models(dtype):
    """The fast model and optimizer as the stages make them, and a plain NCHW copy with its own optimizer from
    make_optimizer."""
    torch.manual_seed(0)
    fast, fast_optimizer = steps.new_model_and_optimizer(CPU, TRAIN)
    fast.to(dtype)  # in place: the optimizer keeps its parameters, the layout stays channels_last
    assert fast[0].weight.is_contiguous(memory_format=torch.channels_last)
    plain = lenet().to(dtype)
    plain.load_state_dict(fast.state_dict())
    return fast, fast_optimizer, plain, make_optimizer(plain, TRAIN, CPU)


def plain_epoch(model, optimizer, x, y, order, name):
    """The textbook loop: one batch at a time, drawn for and transformed by the variant, each image's two
    labels' losses weighted by hand."""
    losses = []
    module, params = (variant.load(name), variant_params(name)) if name is not None else (None, None)
    for step in range(len(order) // BATCH):
        idx = order[step * BATCH:(step + 1) * BATCH]
        xb, yb = x[idx], y[idx]
        weight = None
        if module is not None:
            xb, weight = module.transform(xb, module.draw(params, xb.shape, xb.device), params)
        logits = model(xb)
        if weight is None:
            loss = F.cross_entropy(logits, yb)
        else:
            own = F.cross_entropy(logits, yb, reduction="none")
            other = F.cross_entropy(logits, yb.roll(1, dims=0), reduction="none")
            loss = (weight * own + (1 - weight) * other).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return torch.tensor(losses)  # float32, as train_epoch keeps them


def augment(name):
    """What the training loop passes train_epoch for variant `name` (None: plain)."""
    return variant.augmenter(variant.load(name), variant_params(name)) if name is not None else None


def both(x, y, order, name, dtype):
    fast, fast_optimizer, plain, plain_optimizer = models(dtype)
    torch.manual_seed(1)  # the variant's draws: the same numbers in both loops
    fast_losses = steps.train_epoch(fast, fast_optimizer, x.contiguous(memory_format=torch.channels_last), y,
                                    order, BATCH, len(order) // BATCH, augment(name))
    torch.manual_seed(1)
    plain_losses = plain_epoch(plain, plain_optimizer, x, y, order, name)
    return fast, fast_losses, plain, plain_losses


@pytest.mark.parametrize("name", CASES, ids=IDS)
def test_twenty_steps_compute_the_same(name):
    x, y, order = data(STEPS, torch.float64)
    fast, fast_losses, plain, plain_losses = both(x, y, order, name, torch.float64)
    assert fast_losses.shape == (STEPS,)
    torch.testing.assert_close(fast_losses, plain_losses, rtol=1e-6, atol=0)  # float32 storage, rounding only
    # measured: the weights 4e-14 apart after 20 steps
    for (key, fast_weight), plain_weight in zip(fast.state_dict().items(), plain.state_dict().values(), strict=True):
        torch.testing.assert_close(fast_weight, plain_weight, rtol=1e-9, atol=1e-9, msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.parametrize("name", CASES, ids=IDS)
def test_one_float32_step_computes_the_same(name):
    x, y, order = data(1, torch.float32)
    fast, fast_losses, plain, plain_losses = both(x, y, order, name, torch.float32)
    torch.testing.assert_close(fast_losses, plain_losses, rtol=1e-5, atol=1e-6)  # measured: equal
    for (key, fast_weight), plain_weight in zip(fast.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(fast_weight.grad, plain_weight.grad, rtol=1e-4, atol=1e-6,  # measured: 4e-8 apart
                                   msg=lambda m, k=key: f"gradient of {k}: {m}")


def eager_runner(x, y, name, steps_per_epoch=STEPS):
    """GraphedEpochs (the CUDA path) on the CPU, where nothing can be captured: its step, run eagerly."""
    model, optimizer, _, _ = models(x.dtype)
    runner = steps.GraphedEpochs(model, optimizer, x, y, BATCH, steps_per_epoch, variant.load(name),
                                 variant_params(name))
    runner.capture_error = "the CPU has no CUDA graphs"
    return model, runner


@pytest.mark.parametrize("name", variant.available())
def test_the_cuda_path_computes_the_same_plain_and_transformed_epochs(name):
    """Plain, transformed, plain again, as one runner trains them: each epoch the same as train_epoch's. A plain
    epoch runs the one captured step with the transform switched off (`active` false), which must be exactly
    train_epoch's plain step; a transformed one, train_epoch's step transformed by the variant."""
    x, y, order = data(STEPS, torch.float64)
    x = x.contiguous(memory_format=torch.channels_last)
    fast, fast_optimizer, _, _ = models(torch.float64)
    graphed, runner = eager_runner(x, y, name)
    for number, active in enumerate([False, True, False], 1):
        order = order.roll(number * 7)  # another order each epoch
        torch.manual_seed(number)  # the same draws in both (the runner draws in plain epochs too, and drops them)
        fast_losses = steps.train_epoch(fast, fast_optimizer, x, y, order, BATCH, STEPS,
                                        augment(name) if active else None)
        torch.manual_seed(number)
        losses = runner.epoch(order, active)
        assert runner.path == "cuda-eager" and runner.counter.item() == STEPS
        where = f"epoch {number} ({'transformed' if active else 'plain'})"
        # plain: the same arithmetic, bit for bit but for the mixed loss's 1 * CE + 0 * CE; transformed: rounding
        torch.testing.assert_close(losses, fast_losses, rtol=1e-6 if active else 1e-12, atol=0, msg=where)
        tolerance = 1e-12 if number == 1 else 1e-9  # after a mixed epoch, float64 rounding has added up
        for fast_weight, graphed_weight in zip(fast.parameters(), graphed.parameters(), strict=True):
            torch.testing.assert_close(graphed_weight, fast_weight, rtol=tolerance, atol=tolerance, msg=where)


def test_steps_per_epoch_stops_the_cuda_path_early():
    x, y, order = data(STEPS, torch.float64)
    _, runner = eager_runner(x, y, "mixup", steps_per_epoch=4)
    assert runner.epoch(order).shape == (4,) and runner.counter.item() == 4


class Contiguous:
    """A variant whose transform hands the batch back in the default layout (NCHW contiguous), as many do."""
    PARAMS, ACTION = {}, "copied"

    @staticmethod
    def first_epoch(params):
        return 0

    @staticmethod
    def draw(params, shape, device):
        return torch.empty(0, device=device)

    @staticmethod
    def transform(x, draw, params):
        return x.contiguous(), None


def test_the_loop_keeps_channels_last_whatever_the_transform_returns():
    x, y, order = data(2, torch.float32)
    x = x.contiguous(memory_format=torch.channels_last)
    assert not Contiguous.transform(x, None, {})[0].is_contiguous(memory_format=torch.channels_last)
    seen = []
    model, optimizer = steps.new_model_and_optimizer(CPU, TRAIN)
    model[0].register_forward_pre_hook(lambda _, args: seen.append(args[0].is_contiguous(
        memory_format=torch.channels_last)))
    steps.train_epoch(model, optimizer, x, y, order, BATCH, 2, variant.augmenter(Contiguous, {}), shards=2)
    runner = steps.GraphedEpochs(model, optimizer, x, y, BATCH, 2, Contiguous, {})
    runner.capture_error = "the CPU has no CUDA graphs"
    runner.epoch(order, active=True)
    assert seen == [True] * 6  # 2 steps x 2 shards on the CPU path, 2 steps of the CUDA path's step
