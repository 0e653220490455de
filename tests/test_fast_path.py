"""The project's fast training path computes what the plain textbook loop computes.

Fast: lenet_mixup.steps as the training stages run it (channels_last model and images, fused Adam, train_epoch's
shuffled gather). Plain: an NCHW model, Adam's default implementation, one step at a time on x[idx].
Same initial weights, same order, same seed and so the same mixup lambdas. All on the CPU; the last
test runs the step the CUDA path captures, eagerly, on the CPU.

Twenty float32 steps do not agree to float tolerance, whatever the code: Adam divides each gradient by
its own running magnitude, so a weight whose gradient is near zero moves by ~lr in a direction set by
rounding, and the two runs drift apart (measured: losses up to 2e-3 apart after 20 steps, 1.5e-4
even between fused and unfused Adam on one layout). So the 20 steps run in float64, where rounding
is far below the tolerance and a difference would be a difference in what is computed (the batch,
the lambda, the loss, the update), and one float32 step checks the float32 kernels the stages use.
"""
import pytest
import torch
import torch.nn.functional as F

from lenet_mixup import steps
from lenet_mixup.mixup import mixup_batch, mixup_loss, sample_lambdas
from lenet_mixup.model import lenet

STEPS, BATCH = 20, 50


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
    """The fast model and optimizer as the stages make them, and a plain copy with Adam's default."""
    torch.manual_seed(0)
    fast, fast_optimizer = steps.new_model_and_optimizer("cpu", 1e-3)
    fast.to(dtype)  # in place: the optimizer keeps its parameters, the layout stays channels_last
    assert fast[0].weight.is_contiguous(memory_format=torch.channels_last)
    plain = lenet().to(dtype)
    plain.load_state_dict(fast.state_dict())
    return fast, fast_optimizer, plain, torch.optim.Adam(plain.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_adam_is_torch_fused_adam_to_the_last_bit(dtype):
    """lenet_mixup's FusedAdam against torch.optim.Adam(fused=True), 10 steps on a channels_last LeNet, its
    state saved and loaded half way as a resume does: the same weights, bit for bit."""
    x, y, _ = data(1, dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(0)
    ours, ours_optimizer = steps.new_model_and_optimizer("cpu", 1e-3)
    ours.to(dtype)
    torch_model = lenet().to(dtype).to(memory_format=torch.channels_last)
    torch_model.load_state_dict(ours.state_dict())
    torch_optimizer = torch.optim.Adam(torch_model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7, fused=True)
    for step in range(10):
        for model, optimizer in ((ours, ours_optimizer), (torch_model, torch_optimizer)):
            optimizer.zero_grad()
            F.cross_entropy(model(x * (1 + step / 10)), y).backward()
            optimizer.step()
        if step == 5:
            saved = ours_optimizer.state_dict()
            ours_optimizer = steps.FusedAdam(ours.parameters(), 0.5, (0.5, 0.5), 0.5)  # all of it comes back
            ours_optimizer.load_state_dict(saved)
    for name, weight in torch_model.state_dict().items():
        assert torch.equal(ours.state_dict()[name], weight), name


def plain_epoch(model, optimizer, x, y, order, alpha):
    losses = []
    for step in range(len(order) // BATCH):
        idx = order[step * BATCH:(step + 1) * BATCH]
        xb, yb = x[idx], y[idx]
        if alpha is None:
            loss = F.cross_entropy(model(xb), yb)
        else:
            lam = sample_lambdas(alpha, 1)[0]  # one draw per step, as the textbook loop does
            loss = mixup_loss(model(mixup_batch(xb, lam)), yb, lam)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return torch.tensor(losses)  # float32, as train_epoch keeps them


def epoch_lambdas(alpha, n):
    """An epoch's lambdas as the training loop draws them: all at once, from seed 1."""
    torch.manual_seed(1)
    return sample_lambdas(alpha, n) if alpha is not None else None


def both(x, y, order, alpha, dtype):
    fast, fast_optimizer, plain, plain_optimizer = models(dtype)
    n = len(order) // BATCH
    fast_losses = steps.train_epoch(fast, fast_optimizer, x.contiguous(memory_format=torch.channels_last), y,
                                    order, BATCH, n, epoch_lambdas(alpha, n))
    torch.manual_seed(1)
    plain_losses = plain_epoch(plain, plain_optimizer, x, y, order, alpha)
    return fast, fast_losses, plain, plain_losses


@pytest.mark.parametrize("alpha", [None, 1.0], ids=["plain", "mixup"])
def test_twenty_steps_compute_the_same(alpha):
    x, y, order = data(STEPS, torch.float64)
    fast, fast_losses, plain, plain_losses = both(x, y, order, alpha, torch.float64)
    assert fast_losses.shape == (STEPS,)
    torch.testing.assert_close(fast_losses, plain_losses, rtol=1e-6, atol=0)  # float32 storage, rounding only
    # measured: the weights 4e-14 apart after 20 steps
    for (name, fast_weight), plain_weight in zip(fast.state_dict().items(), plain.state_dict().values(), strict=True):
        torch.testing.assert_close(fast_weight, plain_weight, rtol=1e-9, atol=1e-9, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("alpha", [None, 1.0], ids=["plain", "mixup"])
def test_one_float32_step_computes_the_same(alpha):
    x, y, order = data(1, torch.float32)
    fast, fast_losses, plain, plain_losses = both(x, y, order, alpha, torch.float32)
    torch.testing.assert_close(fast_losses, plain_losses, rtol=1e-5, atol=1e-6)  # measured: equal
    for (name, fast_weight), plain_weight in zip(fast.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(fast_weight.grad, plain_weight.grad, rtol=1e-4, atol=1e-6,  # measured: 4e-8 apart
                                   msg=lambda m, n=name: f"gradient of {n}: {m}")


def eager_runner(x, y, dtype):
    """GraphedEpochs (the CUDA path) on the CPU, where nothing can be captured: its step, run eagerly."""
    model, optimizer, _, _ = models(dtype)
    runner = steps.GraphedEpochs(model, optimizer, x, y, BATCH, STEPS)
    runner.capture_error = "the CPU has no CUDA graphs"
    return model, runner


def test_the_cuda_path_computes_the_same_plain_epoch():
    """A plain epoch of the CUDA path is the lambda = 1 step, which must be exactly train_epoch's plain step."""
    x, y, order = data(STEPS, torch.float64)
    x = x.contiguous(memory_format=torch.channels_last)
    fast, fast_optimizer, _, _ = models(torch.float64)
    fast_losses = steps.train_epoch(fast, fast_optimizer, x, y, order, BATCH, STEPS)
    graphed, runner = eager_runner(x, y, torch.float64)
    losses = runner.epoch(order)
    assert runner.path == "cuda-eager"
    assert runner.counter.item() == STEPS and (runner.lams == 1).all()
    torch.testing.assert_close(losses, fast_losses, rtol=1e-12, atol=0)
    for fast_weight, graphed_weight in zip(fast.parameters(), graphed.parameters(), strict=True):
        torch.testing.assert_close(graphed_weight, fast_weight, rtol=1e-12, atol=0)


def test_the_cuda_path_computes_the_same_mixup_epoch():
    """The CUDA path's step, given the same epoch of lambdas, matches train_epoch's mixup epoch."""
    x, y, order = data(STEPS, torch.float64)
    x = x.contiguous(memory_format=torch.channels_last)
    fast, fast_optimizer, _, _ = models(torch.float64)
    lams = epoch_lambdas(1.0, STEPS)
    fast_losses = steps.train_epoch(fast, fast_optimizer, x, y, order, BATCH, STEPS, lams)
    graphed, runner = eager_runner(x, y, torch.float64)
    losses = runner.epoch(order, lams)
    assert torch.equal(runner.lams, lams) and runner.counter.item() == STEPS
    torch.testing.assert_close(losses, fast_losses, rtol=1e-6, atol=0)
    for fast_weight, graphed_weight in zip(fast.parameters(), graphed.parameters(), strict=True):
        torch.testing.assert_close(graphed_weight, fast_weight, rtol=1e-9, atol=1e-9)


def test_steps_per_epoch_stops_the_cuda_path_early():
    x, y, order = data(STEPS, torch.float64)
    model, optimizer, _, _ = models(torch.float64)
    runner = steps.GraphedEpochs(model, optimizer, x, y, BATCH, 4)
    runner.capture_error = "the CPU has no CUDA graphs"
    assert runner.epoch(order).shape == (4,) and runner.counter.item() == 4
