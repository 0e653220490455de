"""The CPU path's results depend on the configuration (train.shards), never on the workers or the load.

Each op runs on one thread, a batch is cut into `shards` pieces whose gradients are summed in order,
and an evaluation into chunks combined in order (lenet_mixup.cpu), so one worker and two give the
same bits, and one shard is the plain textbook step.
"""
import pytest
import torch
import torch.nn.functional as F

from lenet_mixup import cpu, evaluation, robustness, steps, variant
from tests.helpers import TEST_PARAMS, variant_params

BATCH, STEPS = 50, 6
TRAIN, CPU = TEST_PARAMS["train"], torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread_per_op():
    threads = torch.get_num_threads()
    cpu.use_one_thread_per_op()
    yield
    torch.set_num_threads(threads)


def data():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(STEPS * BATCH, 3, 32, 32, generator=generator).contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, 10, (len(x),), generator=generator), torch.randperm(len(x), generator=generator)


def augment(name):
    """What the training loop passes train_epoch for variant `name`, with the tests' params for it."""
    return variant.augmenter(variant.load(name), variant_params(name))


def epoch(shards, workers, name=None, precision="fp32"):
    """An epoch of train_epoch: plain (name None), or every batch transformed by variant `name`."""
    x, y, order = data()
    torch.manual_seed(0)
    model, optimizer = steps.new_model_and_optimizer(CPU, TRAIN)
    losses = steps.train_epoch(model, optimizer, x, y, order, BATCH, STEPS, augment(name) if name else None,
                               precision, shards=shards, workers=workers)
    return losses, model.state_dict()


def identical(a, b):
    return torch.equal(a[0], b[0]) and all(torch.equal(p, q) for p, q in zip(a[1].values(), b[1].values(), strict=True))


@pytest.mark.parametrize("name, precision", [(None, "fp32"), *((n, "fp32") for n in variant.available()),
                                             ("mixup", "bf16"), ("cutmix", "bf16")],
                         ids=["plain", *(f"{n}-transformed" for n in variant.available()), "mixup-bf16",
                              "cutmix-bf16"])
def test_the_bits_depend_on_the_shards_not_on_the_workers(name, precision):
    torch.set_num_threads(2)  # whatever the caller had set: the pieces are computed one thread per op
    two = epoch(2, 1, name, precision)
    torch.set_num_threads(2)
    assert identical(epoch(2, 2, name, precision), two)
    assert identical(epoch(5, 3, name, precision), epoch(5, 1, name, precision))
    assert not identical(epoch(1, 1, name, precision), two), "shards must change the arithmetic, or mean nothing"


def test_one_shard_is_the_plain_step_to_the_last_bit():
    x, y, order = data()
    torch.manual_seed(0)
    model, optimizer = steps.new_model_and_optimizer(CPU, TRAIN)
    plain = []
    for step in range(STEPS):
        idx = order[step * BATCH:(step + 1) * BATCH]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        plain.append(loss.detach())
    assert identical(epoch(1, 2), (torch.stack(plain), model.state_dict()))


@pytest.mark.parametrize("name", variant.available())
def test_shards_are_the_batch_gradient_up_to_rounding(name):
    """Pieces weighted by their size: the summed gradients are the whole batch's, in float64 exactly so. The batch
    is transformed whole, then cut: each piece's images keep their partners and weights from the whole batch."""
    x, y, _ = data()
    x, y = x[:BATCH].double(), y[:BATCH]
    results = []
    for shards in (1, 3):
        torch.manual_seed(0)
        model, optimizer = steps.new_model_and_optimizer(CPU, TRAIN)
        model.double()
        steps.train_step(model, optimizer, x, y, augment(name), shards=shards)  # the same draw: seeded alike
        results.append([p.grad for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_evaluation_and_fgsm_are_the_same_on_any_number_of_workers(workers, monkeypatch):
    """Chunks over workers, combined in order: the same as one chunk after another, and as one chunk of all;
    and FGSM's gradient, computed once for every epsilon, gives what an attack per epsilon gives."""
    x, y, _ = data()
    x, y = x[:2 * evaluation.EVAL_CHUNK // 10 * 10], y[:2 * evaluation.EVAL_CHUNK // 10 * 10]
    torch.manual_seed(0)
    model, _ = steps.new_model_and_optimizer(CPU, TRAIN)
    monkeypatch.setattr(evaluation, "EVAL_CHUNK", 70)  # several chunks, the last one short
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    one = evaluation.evaluate(model, x, y), evaluation.predict(model, x)
    epsilons = [0.0, 1 / 255, 8 / 255]
    attacked = [sum((model(robustness.fgsm(model, x[i:i + 70], y[i:i + 70], e)).argmax(1) == y[i:i + 70]).sum().item()
                    for i in range(0, len(x), 70)) / len(x) for e in epsilons]
    monkeypatch.setenv("OMP_NUM_THREADS", workers)
    assert evaluation.evaluate(model, x, y) == one[0]
    monkeypatch.setattr(evaluation, "EVAL_CHUNK", 1000)  # one chunk: the same bits
    assert evaluation.evaluate(model, x, y) == one[0] and torch.equal(evaluation.predict(model, x), one[1])
    monkeypatch.setattr(evaluation, "EVAL_CHUNK", 70)
    assert torch.equal(evaluation.predict(model, x), one[1])
    assert robustness.fgsm_accuracies(model, x, y, epsilons) == attacked
    assert model.training, "evaluation puts the model back in training mode"


FLAGS = "processor\t: {i}\nmodel name\t: x86-64 VM\nflags\t\t: fpu sse2 avx2 avx512f avx512bw {extra}\n\n"


def fake_cpuinfo(path, extra=""):
    path.write_text("".join(FLAGS.format(i=i, extra=extra) for i in range(2)))
    return str(path)


def test_bf16_instructions_are_read_from_the_cpu_flags(tmp_path):
    assert cpu.bf16_instructions(fake_cpuinfo(tmp_path / "plain")) is False
    assert cpu.bf16_instructions(fake_cpuinfo(tmp_path / "avx512", "avx512_bf16")) is True
    assert cpu.bf16_instructions(fake_cpuinfo(tmp_path / "amx", "amx_tile amx_bf16")) is True
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu.bf16_instructions(str(tmp_path / "arm")) is None  # not an x86 CPU: no verdict, no warning
    assert cpu.bf16_instructions(str(tmp_path / "missing")) is None


def test_bf16_warns_on_a_cpu_without_bf16_instructions_only(tmp_path, capsys):
    plain, bf16 = fake_cpuinfo(tmp_path / "plain"), fake_cpuinfo(tmp_path / "bf16", "avx512_bf16")
    assert cpu.warn_if_bf16_is_emulated("bf16", "cpu", plain)
    out = capsys.readouterr().out
    assert "no BF16 instructions" in out and "slower than fp32" in out and "set train.precision: fp32" in out
    for args in (("fp32", "cpu", plain), ("bf16", "cpu", bf16), ("bf16", "cuda", plain)):
        assert not cpu.warn_if_bf16_is_emulated(*args), args
    assert capsys.readouterr().out == ""


def test_a_bf16_training_run_warns_once_on_such_a_cpu(prepared, tmp_path, monkeypatch, capsys):
    from lenet_mixup import training
    monkeypatch.setattr(cpu, "CPUINFO", fake_cpuinfo(tmp_path / "cpuinfo"))
    training.train_variant("baseline", {**TRAIN, "device": "cpu", "epochs": 2, "precision": "bf16"}, {}, CPU)
    assert capsys.readouterr().out.count("this CPU has no BF16 instructions") == 1
    training.train_variant("baseline", {**TRAIN, "device": "cpu", "epochs": 1}, {}, CPU)
    assert "BF16 instructions" not in capsys.readouterr().out
