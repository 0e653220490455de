"""One device resolution for every stage, the benchmark and the tools."""
import torch

from lenet_mixup.cpu import cores, use_one_thread_per_op


def resolve_device(name, announce=True):
    """`auto` is CUDA when there is a GPU, else the CPU; prints which, and sets how CUDA computes.

    On CUDA, TF32 is off: it rounds float32 matmul and conv inputs to 10 mantissa bits, which changes
    results against the CPU path; this pipeline trains in float32 as the tutorial did (train.precision
    chooses bf16 explicitly). cuDNN runs deterministic algorithms, so that, as on the CPU, the same
    seed gives the same metrics and a resumed run the metrics of an uninterrupted one.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cpu":
        use_one_thread_per_op()  # the results then depend on the configuration, never on the cores free
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    if announce:
        print(f"device: {describe(device)}", flush=True)
    return device


def describe(device):
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)}, TF32 off, deterministic cuDNN)"
    workers = cores()
    return f"{device} (CPU, {workers} worker{'s' * (workers > 1)} of one thread each)"
