"""The CUDA path on a real GPU: GraphedEpochs (the whole training step captured once as a CUDA graph and
replayed) and training.train_variant on CUDA. Every test needs CUDA and is skipped, saying why, where there
is none; bench/gpu_check.sh runs them on a GPU machine (tests/pipeline/test_gpu_check.py runs that script's
CPU smoke mode and its staging, so that the device check cannot rot unnoticed on machines without a GPU).

How closely things must agree, and why:
- Graph against eager steps, float32 as the stages train (resolve_device: TF32 off, cuDNN deterministic):
  bitwise equal. A replay
  launches the kernels recorded from the very step that the eager runner runs, on the same inputs, so not
  one bit may differ. (With cuDNN free to choose algorithms whose weight gradients sum with atomics, two
  runs of the same step differ by rounding, and Adam magnifies that over the steps, as tests/test_fast_path.py
  explains; that would hide nothing but prove nothing either, hence the float64 tests.)
- Graph on CUDA against eager steps or against the CPU path, in float64, cuDNN as the stages leave it: the
  tolerances of tests/test_fast_path.py, losses rtol 1e-6 (they are stored as float32), weights rtol and
  atol 1e-9. float64 rounding is ~1e-16; a real difference (another batch, draw, missed or repeated step)
  moves weights by ~lr = 1e-3 and losses by far more than 1e-6.
Each graph test runs every variant in the registry (lenet_mixup/variant.py): its plain epochs (the captured
step replayed with the transform switched off) and, for a variant that transforms, its transformed epochs.
The step draws inside the graph, from the CUDA generator: graph and eager runners seeded alike draw alike
(a replay takes the generator's offsets as the eager step it stands for). Against the CPU path, whose
generator is another, both take their draws from one table (Replayed).
- Whole training runs (train_variant) on CUDA: rows equal to the last digit, as on the CPU (the stages
  run cuDNN's deterministic algorithms for that); a resume that leaves the CUDA generator alone must
  differ, so the kill-and-resume test can fail.
"""
import contextlib

import pytest
import torch

from lenet_mixup import paths, training, variant
from lenet_mixup.device import resolve_device
from lenet_mixup.evaluation import evaluate
from lenet_mixup.steps import GraphedEpochs, new_model_and_optimizer, train_epoch
from tests.helpers import TEST_PARAMS, curve, killed_after, variant_params

cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                          reason="no CUDA device: these tests run on a GPU machine (bench/gpu_check.sh runs them)")

BATCH, STEPS = 50, 12  # 12 steps: GraphedEpochs.WARMUP (3) eager, then capture, then 9 replays
TRAIN = {**TEST_PARAMS["train"], "epochs": 4}
# The epochs each graph test trains, in order: False a plain epoch, True one the variant transforms.
SEQUENCES = {"plain": [False, False, False], "mixed": [True, True, True],
             "plain-then-mixed": [False, True, True]}  # a stage's order with warmup 1
PARAMS = {name: variant_params(name) for name in variant.available()}
TRANSFORMING = [name for name in variant.available() if variant.load(name).first_epoch(PARAMS[name]) is not None]
# (variant, sequence) for every variant: its plain epochs, and its transformed ones if it ever transforms.
CASES = [(name, sequence) for name in variant.available() for sequence in SEQUENCES
         if name in TRANSFORMING or sequence == "plain"]
IDS = [f"{name}-{sequence}" for name, sequence in CASES]


@pytest.fixture
def stage_cuda():
    """CUDA set up as the stages set it up (resolve_device: TF32 off); every setting restored afterwards."""
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    device = resolve_device("cuda")
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    yield device
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
     torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) = flags


def data(device, dtype=torch.float32, steps=STEPS, seed=0):
    """Random images (channels_last, as load_split gives them) and labels for `steps` batches and 30 over."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(steps * BATCH + 30, 3, 32, 32, generator=generator, dtype=dtype)
    y = torch.randint(0, 10, (len(x),), generator=generator)
    return x.to(device).contiguous(memory_format=torch.channels_last), y.to(device)


def epochs(kinds, images, seed=1):
    """One (order, transformed or not, seed of the epoch's draws) per epoch: the same for every runner compared."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randperm(images, generator=generator), active, seed + number)
            for number, active in enumerate(kinds)]


def run_epoch(runner, order, active, seed):
    """One epoch of a GraphedEpochs, its draws from the CUDA generator seeded with `seed`."""
    torch.cuda.manual_seed(seed)
    return runner.epoch(order.to(runner.x.device), active)


class Replayed:
    """Variant `name` with its draws taken from a table, row k at the k-th draw of an epoch (`refill` starts an
    epoch), through a counter on the table's device that each draw advances: a graph captures the reading and
    replays it step by step, eager steps and the CPU path read the same rows."""

    def __init__(self, name, device, steps=STEPS):
        module = variant.load(name)
        self.PARAMS, self.ACTION, self.first_epoch, self.transform = (module.PARAMS, module.ACTION,
                                                                      module.first_epoch, module.transform)
        self.table = table(name, steps, 0).to(device)
        self.counter = torch.zeros(1, dtype=torch.long, device=device)

    def refill(self, rows):
        self.table.copy_(rows)
        self.counter.zero_()

    def draw(self, params, shape, device):
        row = self.table.index_select(0, self.counter).squeeze(0)
        self.counter += 1
        return row


def table(name, steps, seed):
    """An epoch of a variant's draws, a batch's a row, drawn on the CPU."""
    torch.manual_seed(seed)
    module = variant.load(name)
    return torch.stack([module.draw(PARAMS[name], (BATCH, 3, 32, 32), "cpu") for _ in range(steps)])


def transformed_epochs(name, train):
    """What train_variant reports for a variant that transforms: its epochs from the first transformed one on."""
    module = variant.load(name)
    return {variant.epochs_key(module): max(0, train["epochs"] - module.first_epoch(PARAMS[name]))}


def runner(x, y, name, dtype=torch.float32, steps=STEPS, precision="fp32", eager=False, capturable=True,
           module=None):
    """A GraphedEpochs of variant `name` (or of `module`, a stand-in for it) over a fresh model and optimizer made
    as the stages make them (seed 0).

    eager=True: its step runs eagerly, never captured, the way it runs when capture has failed.
    """
    torch.manual_seed(0)
    model, optimizer = new_model_and_optimizer(x.device, TRAIN)
    model.to(dtype)  # in place: the optimizer keeps its parameters
    if not capturable:  # torch.optim's fused Adam, not capturable: torch refuses to capture its step
        optimizer = torch.optim.Adam(model.parameters(), lr=TRAIN["lr"], betas=(0.9, 0.999), eps=1e-7, fused=True)
    graphed = GraphedEpochs(model, optimizer, x, y, BATCH, steps, module or variant.load(name), PARAMS[name],
                            precision)
    if eager:
        graphed.capture_error = "the eager reference"
    return graphed


def state(graphed):
    """Every tensor that training changes: the weights and Adam's moments and step counts (torch.optim's
    Adam, one dict per parameter)."""
    tensors = {f"weight {name}": p for name, p in graphed.model.named_parameters()}
    for i, p in enumerate(graphed.model.parameters()):
        adam = graphed.optimizer.state[p]
        assert adam, f"parameter {i} has no Adam state: no step has run"
        tensors.update({f"adam {key} of parameter {i}": v for key, v in adam.items()})
    return tensors


def assert_bitwise(graphed_losses, eager_losses, graphed, eager, where):
    diffs = {"losses": (graphed_losses - eager_losses).abs().max().item()}
    a, b = state(graphed), state(eager)
    assert a.keys() == b.keys()
    diffs.update({k: (a[k].double() - b[k].double()).abs().max().item() for k in a})
    unequal = {k: d for k, d in diffs.items() if d != 0}  # NaN != 0 too
    assert not unequal, (f"{where}: graph replay and eager steps differ (max |difference|: {unequal}); if the "
                         "float64 tests pass, the graph computes the same and a kernel is nondeterministic")


def assert_close_state(a, b, where):
    for name, tensor in state(a).items():
        torch.testing.assert_close(tensor.double().cpu(), state(b)[name].double().cpu(), rtol=1e-9, atol=1e-9,
                                   msg=lambda m, n=name: f"{where}, {n}: {m}")


@contextlib.contextmanager
def host_syncs_raise():
    """torch.cuda.set_sync_debug_mode("error") inside, whatever it was before restored after."""
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(before)


@cuda
@pytest.mark.parametrize("name, sequence", CASES, ids=IDS)
def test_graph_replay_equals_eager_steps_bitwise_in_float32(stage_cuda, name, sequence):
    """Three epochs in a row: the first runs the WARMUP eager steps, captures, and replays the rest."""
    x, y = data(stage_cuda)
    graphed, eager = runner(x, y, name), runner(x, y, name, eager=True)
    for number, epoch in enumerate(epochs(SEQUENCES[sequence], len(x)), 1):
        graphed_losses, eager_losses = run_epoch(graphed, *epoch), run_epoch(eager, *epoch)
        assert graphed.graph is not None and graphed.capture_error is None and graphed.path == "cuda-graph"
        assert eager.graph is None and eager.path == "cuda-eager"
        assert graphed.counter.item() == eager.counter.item() == STEPS
        assert graphed_losses.shape == (STEPS,) and torch.isfinite(graphed_losses).all()
        assert_bitwise(graphed_losses, eager_losses, graphed, eager, f"epoch {number} of {sequence}")


@cuda
@pytest.mark.parametrize("name, sequence", CASES, ids=IDS)
def test_graph_replay_equals_eager_steps_in_float64(stage_cuda, name, sequence):
    x, y = data(stage_cuda, torch.float64)
    graphed, eager = runner(x, y, name, torch.float64), runner(x, y, name, torch.float64, eager=True)
    for number, epoch in enumerate(epochs(SEQUENCES[sequence], len(x)), 1):
        graphed_losses, eager_losses = run_epoch(graphed, *epoch), run_epoch(eager, *epoch)
        assert graphed.path == "cuda-graph" and graphed.graph is not None
        torch.testing.assert_close(graphed_losses, eager_losses, rtol=1e-6, atol=0)
        assert_close_state(graphed, eager, f"epoch {number} of {sequence}")


@cuda
@pytest.mark.parametrize("eager", [False, True], ids=["graph", "eager"])
@pytest.mark.parametrize("name, sequence", CASES, ids=IDS)
def test_the_cuda_step_computes_what_the_cpu_step_computes(stage_cuda, name, sequence, eager):
    """The same weights, orders and draws (one table, read by both): CUDA's replayed graph, and its step run
    eagerly, against train_epoch on the CPU, float64."""
    x, y = data("cpu", torch.float64)
    on_cuda, on_cpu = Replayed(name, stage_cuda), Replayed(name, "cpu")
    graphed = runner(x.to(stage_cuda), y.to(stage_cuda), name, torch.float64, eager=eager, module=on_cuda)
    torch.manual_seed(0)
    model, optimizer = new_model_and_optimizer(torch.device("cpu"), TRAIN)
    model.to(torch.float64)
    model.load_state_dict({k: v.cpu() for k, v in graphed.model.state_dict().items()})
    for number, (order, active, seed) in enumerate(epochs(SEQUENCES[sequence], len(x)), 1):
        rows = table(name, STEPS, seed)
        on_cpu.refill(rows)
        cpu_losses = train_epoch(model, optimizer, x, y, order, BATCH, STEPS,
                                 variant.augmenter(on_cpu, PARAMS[name]) if active else None)
        on_cuda.refill(rows.to(stage_cuda))
        cuda_losses = graphed.epoch(order.to(stage_cuda), active)
        assert graphed.path == ("cuda-eager" if eager else "cuda-graph")
        torch.testing.assert_close(cuda_losses.cpu(), cpu_losses, rtol=1e-6, atol=0)
        for (key, weight), cpu_weight in zip(graphed.model.named_parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(weight.detach().cpu(), cpu_weight.detach(), rtol=1e-9, atol=1e-9,
                                       msg=lambda m, k=key, e=number: f"epoch {e} of {sequence}, {k}: {m}")


@cuda
@pytest.mark.parametrize("name", TRANSFORMING)
@pytest.mark.parametrize("path", ["cuda-graph", "cuda-eager"])
def test_an_epoch_never_waits_on_the_host(stage_cuda, path, name):
    """After the first epoch (its capture synchronizes, as torch.cuda.graph does on entry), no epoch syncs, the
    variant's draws and transform included."""
    x, y = data(stage_cuda)
    graphed = runner(x, y, name, eager=path == "cuda-eager")
    plan = [(order.to(stage_cuda), active) for order, active, _ in epochs([True, True, False], len(x))]
    graphed.epoch(*plan[0])
    torch.cuda.synchronize()
    with host_syncs_raise():
        mixed_losses = graphed.epoch(*plan[1])
        plain_losses = graphed.epoch(*plan[2])
        with pytest.raises(RuntimeError):  # the mode is really on: reading a loss on the host syncs
            plain_losses.sum().item()
    assert graphed.path == path
    assert torch.isfinite(mixed_losses).all() and torch.isfinite(plain_losses).all()


@cuda
@pytest.mark.parametrize("name", TRANSFORMING)
def test_the_graph_survives_an_evaluation_between_epochs(stage_cuda, name):
    """As training does: evaluate (inference mode, eval batches of 1000) between epochs, and free the cache."""
    x, y = data(stage_cuda)
    eval_x, eval_y = data(stage_cuda, steps=50, seed=2)  # 2530 images: three eval batches, the last partial
    graphed, eager = runner(x, y, name), runner(x, y, name, eager=True)
    graph = None
    for number, epoch in enumerate(epochs(SEQUENCES["plain-then-mixed"] + [True], len(x)), 1):
        graphed_losses, eager_losses = run_epoch(graphed, *epoch), run_epoch(eager, *epoch)
        graph = graph or graphed.graph
        assert graphed.graph is graph and graphed.path == "cuda-graph"  # captured once, replayed ever after
        assert_bitwise(graphed_losses, eager_losses, graphed, eager, f"epoch {number}")
        assert evaluate(graphed.model, eval_x, eval_y) == evaluate(eager.model, eval_x, eval_y)
        torch.cuda.empty_cache()


@cuda
@pytest.mark.parametrize("name", TRANSFORMING)
def test_a_failed_capture_falls_back_to_eager_steps_that_train_the_same(stage_cuda, name):
    """A non-capturable Adam fails capture for real, as any failed capture would: the runner says so and why,
    and its eager steps, after the failed capture, train what a graph trains."""
    x, y = data(stage_cuda, torch.float64)
    failed, graphed = runner(x, y, name, torch.float64, capturable=False), runner(x, y, name, torch.float64)
    for epoch in epochs(SEQUENCES["plain-then-mixed"], len(x)):
        torch.testing.assert_close(run_epoch(failed, *epoch), run_epoch(graphed, *epoch), rtol=1e-6, atol=0)
        assert failed.path == "cuda-eager" and failed.graph is None and "capturable" in failed.capture_error
        assert graphed.path == "cuda-graph"
    assert_close_state(failed, graphed, "after three epochs")


@cuda
@pytest.mark.parametrize("name", TRANSFORMING)
def test_a_killed_run_resumes_exactly_on_cuda(prepared, monkeypatch, capsys, stage_cuda, name):
    device, resume, params = stage_cuda, paths.resume_state(name), PARAMS[name]
    uninterrupted = curve(training.train_variant(name, TRAIN, params, device)[0])
    killed_after(2, monkeypatch, name, TRAIN, params, device, resume)
    saved = torch.load(resume, map_location="cpu", weights_only=True)
    assert saved["epoch"] == 2 and "cuda_rng" in saved  # the variant's draws come from the CUDA generator
    capsys.readouterr()
    rows, _, _, path = training.train_variant(name, TRAIN, params, device, resume_path=resume)
    out = capsys.readouterr().out
    assert f"resuming {name} after epoch 2" in out and "training path: cuda-graph" in out
    assert path == {"train_path": "cuda-graph", **transformed_epochs(name, TRAIN)}
    assert curve(rows) == uninterrupted, "the resumed run differs from the uninterrupted one"
    # The test can tell: a resume that leaves the CUDA generator alone draws other draws.
    resume.unlink()  # the finished run's state (the stage deletes it; train_variant leaves it)
    killed_after(2, monkeypatch, name, TRAIN, params, device, resume)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda *args, **kwargs: None)
    unrestored = curve(training.train_variant(name, TRAIN, params, device, resume_path=resume)[0])
    assert unrestored[:2] == uninterrupted[:2] and unrestored[2:] != uninterrupted[2:]


@cuda
@pytest.mark.parametrize("name", TRANSFORMING)
def test_the_same_seed_trains_the_same_on_cuda(prepared, stage_cuda, name):
    """As the stages run: if this fails, so does the resume test above, and the cause is a nondeterministic kernel."""
    train = {**TRAIN, "epochs": 3}
    first = curve(training.train_variant(name, train, PARAMS[name], stage_cuda)[0])
    assert curve(training.train_variant(name, train, PARAMS[name], stage_cuda)[0]) == first


@cuda
@pytest.mark.parametrize("name, precision", [*((n, "fp32") for n in variant.available()), ("mixup", "bf16")])
def test_cuda_training_runs_and_reports_the_graph_path(prepared, stage_cuda, capsys, name, precision):
    train, params = {**TRAIN, "epochs": 2, "precision": precision}, PARAMS[name]
    rows, best, final, path = training.train_variant(name, train, params, stage_cuda)
    transformed = transformed_epochs(name, train) if name in TRANSFORMING else {}
    assert path == {"train_path": "cuda-graph", **transformed}  # no capture_error
    assert "training path: cuda-graph\n" in capsys.readouterr().out
    assert len(rows) == 2 and all(0 < r["train_loss"] < 10 and 0 <= r["eval_acc"] <= 1 for r in rows)
    assert final["model"]["0.weight"].is_cuda and best["epoch"] in (1, 2)
    if precision == "bf16":  # autocast really ran, and trains about as float32 does
        fp32 = curve(training.train_variant(name, {**train, "precision": "fp32"}, params, stage_cuda)[0])
        assert curve(rows) != fp32
        for a, b in zip(curve(rows), fp32, strict=True):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.05)


@cuda
def test_a_failed_capture_is_reported_with_its_reason(prepared, stage_cuda, capsys, monkeypatch):
    def not_capturable(device, train):  # torch.optim's fused Adam, not capturable: a capture that fails for real
        model, _ = new_model_and_optimizer(device, train)
        return model, torch.optim.Adam(model.parameters(), lr=train["lr"], betas=(0.9, 0.999), eps=1e-7, fused=True)
    monkeypatch.setattr(training, "new_model_and_optimizer", not_capturable)
    rows, _, _, path = training.train_variant("baseline", {**TRAIN, "epochs": 2}, {}, stage_cuda)
    assert path["train_path"] == "cuda-eager" and "capturable" in path["capture_error"]
    assert f"training path: cuda-eager (CUDA graph capture failed: {path['capture_error']})" in capsys.readouterr().out
    assert len(rows) == 2


@cuda
def test_a_resume_state_written_on_the_cpu_is_not_resumed_on_cuda(prepared, stage_cuda, monkeypatch, capsys):
    """The same params (device: auto) on a CPU machine, then on a GPU: the GPU run starts over and captures."""
    resume, mixup = paths.resume_state("mixup"), PARAMS["mixup"]
    killed_after(1, monkeypatch, "mixup", TRAIN, mixup, torch.device("cpu"), resume)
    assert "cuda_rng" not in torch.load(resume, map_location="cpu", weights_only=True)
    capsys.readouterr()
    rows, _, _, path = training.train_variant("mixup", TRAIN, mixup, stage_cuda, resume_path=resume)
    out = capsys.readouterr().out
    assert f"ignoring {resume}: it was written for other params, device, code or data" in out
    assert "resuming" not in out and [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert path == {"train_path": "cuda-graph", **transformed_epochs("mixup", TRAIN)}
    assert "cuda_rng" in torch.load(resume, map_location="cpu", weights_only=True)
