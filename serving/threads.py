"""How many threads a thread's torch operations run on, set so that it stays set.

torch keeps a count per thread, but initialises each thread's lazily: at that thread's first query or parallel
operation, to the count any thread set last. A thread that only calls `torch.set_num_threads` before its first
operation is therefore overridden when another thread sets a different count in between. That is what happened
in the API process: the request thread that loads a model set one thread, the precision measurement's thread
then set two, and the request thread built the engine's weights on two threads. Its OpenMP team outlived the
request (the request threads are pooled), and with more OpenMP threads than cores libgomp stops spinning at its
barriers: every parallel region of the engine then paid a futex wake-up (3,300-4,700 sleeps a second in each of
the engine's two threads). One chat stream through the API ran at 24-30 tokens/s against 42 with the count made
to stick (AMD EPYC with AVX-512 BF16, 2 cores; docs/benchmarks.md).
"""

from __future__ import annotations

import torch


def set_torch_threads(count: int) -> None:
    """This thread's torch operations run on `count` threads from now on (see the module docstring)."""
    torch.get_num_threads()  # runs this thread's lazy initialisation now, so that it cannot undo the next line
    torch.set_num_threads(count)


def single_threaded_torch() -> None:
    """Call in any thread other than an engine's before it runs torch operations (loading a model,
    converting an adapter). A thread that runs parallel torch operations keeps its own OpenMP team, and
    while another team exists libgomp stops spinning and every parallel region of the engine pays a
    futex wake-up: measured 4-7x slower matrix products on 2 cores (docs/benchmarks.md, "Measurements behind code
    comments"). One-thread work creates no team."""
    set_torch_threads(1)
