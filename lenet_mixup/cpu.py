"""How the CPU path uses the cores: every op on one thread, the work cut into fixed pieces.

Why not torch's default, every op spread over all the cores? Two reasons, both measured here:
- The bits of a float32 result depend on how an op splits its sums between threads, so a result would
  depend on the thread count, which users and launchers set differently (a sweep ran one thread per
  run, `dvc exp run` two), and the run-cache would mix the two.
- An op spread over all the cores waits for the slowest of them: beside one busy core (any other
  program, or a second training under `dvc queue start -j 2`), training ran 2 to 4 times slower.
So each op runs on one thread, and the work is cut into pieces fixed by the configuration (a training
batch into `train.shards` shards, an evaluation into EVAL_BATCH images), which a pool of worker
threads takes in turn, whichever cores are free. The results are combined in the pieces' order,
so they depend on the pieces, never on the number of workers or the load.
"""
import ctypes
import functools
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


def use_one_thread_per_op():
    """The process setting every CPU computation of the project runs under (see the module's doc)."""
    torch.set_num_threads(1)
    tune_cpu()


@functools.cache
def _pool(workers):
    return ThreadPoolExecutor(workers, thread_name_prefix="cpu-worker", initializer=flush_denormals)


def map_in_order(function, pieces, workers=None):
    """[function(piece) for piece in pieces], the pieces spread over `workers` threads (default: cores()).

    With one worker, or one piece, everything runs here, on the calling thread.
    """
    pieces = list(pieces)
    workers = min(workers or cores(), len(pieces))
    if workers <= 1:
        return [function(piece) for piece in pieces]
    return list(_pool(workers).map(function, pieces))


def flush_denormals():
    """Denormal floats flush to zero, on the calling thread (the setting is per thread, in the CPU's control
    register, so every worker sets it as it starts). Mixup's gradients drift into the denormal range, where
    x86 arithmetic is many times slower: the mixup stage ran at 5,800 img/s without, 7,700 with."""
    torch.set_flush_denormal(True)


@functools.cache
def tune_cpu():
    """Two process settings that each made training measurably faster here.

    - Denormals flush to zero on this thread (flush_denormals; the pool's workers set it themselves).
    - glibc keeps freed blocks of up to 32 MiB for reuse instead of handing them back to the OS.
      PyTorch's CPU allocator has no cache: each step allocates and frees activations of a few MiB,
      which glibc by default maps and unmaps every time, so the kernel zero-fills fresh pages on every
      step (1.3-1.7x per step, bench/train_speed.py). Without glibc this part does nothing.
    """
    flush_denormals()
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return
    mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: blocks below 32 MiB (glibc's maximum) come from the heap
    mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: give the heap's top back only beyond 1 GiB free
