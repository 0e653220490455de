"""How the CPU path uses the cores: every op on one thread, the work cut into fixed pieces.

An op spread over all the cores (torch's default) gives bits that depend on the thread count, and waits
for the slowest core, so beside any other work it slows down several times (docs/performance.md). Here
each op runs on one thread, and the work is cut into pieces fixed by the configuration (a training batch
into `train.shards` shards, an evaluation into EVAL_CHUNK images), which a pool of worker threads takes in
turn, on whichever cores are free. The results are combined in the pieces' order, so they depend on the
pieces, never on the number of workers or the load.
"""
import ctypes
import functools
import itertools
import os
from concurrent.futures import ThreadPoolExecutor

import torch


def cores():
    """The workers a process uses: OMP_NUM_THREADS when it is set (the way users and tools.sweep cap a run's
    CPUs), else the cores this process may run on. It changes the speed, never the results."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # the x86 instructions that compute in bf16 rather than emulate it
CPUINFO = "/proc/cpuinfo"


def bf16_instructions(cpuinfo=None):
    """Whether this CPU computes bf16 in hardware (an x86 flag of BF16_FLAGS in /proc/cpuinfo), or None where
    the file says nothing of it (no such file, another architecture)."""
    try:
        text = open(cpuinfo or CPUINFO).read()
    except OSError:
        return None
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    if "avx512f" not in flags and "avx2" not in flags:
        return None  # not an x86 CPU this check knows
    return any(flag in flags for flag in BF16_FLAGS)


def warn_if_bf16_is_emulated(precision, device, cpuinfo=None):
    """One warning where train.precision bf16 would run slower than fp32: a CPU without BF16 instructions."""
    if precision == "bf16" and torch.device(device).type == "cpu" and bf16_instructions(cpuinfo) is False:
        print("warning: train.precision is bf16, but this CPU has no BF16 instructions (neither "
              f"{' nor '.join(BF16_FLAGS)} in {cpuinfo or CPUINFO}): bf16 is emulated here, about 2.5 times slower "
              "than fp32 (measured: 0.40x to 0.43x of fp32's speed on such a CPU, docs/performance.md); set "
              "train.precision: fp32", flush=True)
        return True
    return False


def use_one_thread_per_op():
    """The process setting every CPU computation of the project runs under (see the module's doc)."""
    torch.set_num_threads(1)
    tune_cpu()


@functools.cache
def _pool(workers):
    return ThreadPoolExecutor(workers, thread_name_prefix="cpu-worker", initializer=flush_denormals)


def map_in_order(function, pieces, workers=None):
    """[function(piece) for piece in pieces], the pieces taken in turn by `workers` threads (default: cores()),
    the calling thread one of them; the results in the pieces' order, whichever thread computed each. Each
    thread computes its pieces one thread per op; one piece alone runs here, as the caller has set things.
    """
    pieces = list(pieces)
    workers = min(workers or cores(), len(pieces))
    if len(pieces) == 1:  # one piece: the caller's own settings (bench/contention.py times torch's threads so)
        return [function(pieces[0])]
    results, taken = [None] * len(pieces), itertools.count()

    def work():  # next() on a count is atomic under the GIL: each piece is taken once
        one_thread_per_op_here()  # whichever thread computes a piece, it computes the same bits
        while (i := next(taken)) < len(pieces):
            results[i] = function(pieces[i])
    if workers <= 1:
        work()
        return results
    helpers = [_pool(workers - 1).submit(work) for _ in range(workers - 1)]
    work()
    for helper in helpers:
        helper.result()  # a helper's exception is raised here
    return results


def one_thread_per_op_here():
    """This thread's ops on one thread, denormals flushed. Both settings belong to each thread (torch's
    thread count as each thread first used it, the flush in the CPU's control register), so every thread
    that computes a piece sets them, whatever the process did before it existed."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    flush_denormals()


def flush_denormals():
    """Denormal floats flush to zero on the calling thread (a per-thread setting): mixup's gradients drift into
    the denormal range, where x86 arithmetic is many times slower."""
    torch.set_flush_denormal(True)


@functools.cache
def tune_cpu():
    """Process settings that make the CPU path faster and leave its bits alone: denormals flushed, and glibc
    keeping every freed block in one heap for reuse instead of handing it back to the kernel, which would
    zero-fill fresh pages on every step (PyTorch's CPU allocator keeps no cache). Without glibc the second
    part does nothing. docs/performance.md has the figures.
    """
    flush_denormals()
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return
    mallopt(-8, 1)  # M_ARENA_MAX: one arena for every thread, the main heap
    mallopt(-4, 0)  # M_MMAP_MAX: no block mapped on its own, however large
    mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: give the heap's top back only beyond 1 GiB free
