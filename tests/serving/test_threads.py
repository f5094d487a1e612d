"""A thread's torch thread count, once set with serving.threads, stays what it set even when another thread sets a
different count before this one's first operation (torch initialises each thread's count lazily, to the count
set last by any thread). The engine's request threads depend on it: a request thread that computed on two threads
kept an OpenMP team alive beside the engine's, and the engine's threads then slept at every barrier instead of
spinning (one stream through the API at 24-30 tokens/s instead of 42-44)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# In a process of its own: the scenario leaves torch's process-wide count at two, which threads started later by
# the test process would inherit.
SCENARIO = textwrap.dedent("""
    import json, os, sys, threading, time
    import torch
    from serving.threads import set_torch_threads

    setter = set_torch_threads if sys.argv[1] == "set_torch_threads" else torch.set_num_threads
    set_by_request, measured = threading.Event(), threading.Event()
    seen = {}

    def request_thread():  # like the API's request thread: one thread, set before it computes anything
        setter(1)
        set_by_request.set()
        measured.wait()
        torch.ones(1 << 22).mul_(2)  # large enough for torch to compute it in parallel where it may
        seen["threads"] = torch.get_num_threads()
        seen["tasks"] = len(os.listdir("/proc/self/task"))

    def measuring_thread():  # like the precision measurement: two threads, in a thread that then ends
        set_torch_threads(2)
        torch.ones(1 << 22).mul_(2)

    request = threading.Thread(target=request_thread)
    request.start()
    set_by_request.wait()
    seen["tasks_before"] = len(os.listdir("/proc/self/task"))
    measuring = threading.Thread(target=measuring_thread)
    measuring.start()
    measuring.join()
    # The measuring thread's OpenMP team ends with it, its threads a moment later.
    deadline = time.monotonic() + 10
    while len(os.listdir("/proc/self/task")) > seen["tasks_before"] and time.monotonic() < deadline:
        time.sleep(0.01)
    measured.set()
    request.join()
    print(json.dumps(seen))
""")


def _run(setter: str) -> dict:
    import json

    out = subprocess.run([sys.executable, "-c", SCENARIO, setter], capture_output=True, text=True, check=True,
                         timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts the process's threads in /proc")
def test_a_thread_count_set_with_set_torch_threads_survives_another_thread_setting_its_own() -> None:
    seen = _run("set_torch_threads")
    # One thread, and no OpenMP team: the process has no thread more than before the request computed.
    assert seen["threads"] == 1 and seen["tasks"] == seen["tasks_before"], seen


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts the process's threads in /proc")
def test_why_torch_set_num_threads_alone_does_not_do_it() -> None:
    # torch 2.13: the request thread's lazy initialisation takes the measuring thread's two and starts a team of two
    # (a thread more in the process) that lives as long as the request thread does.
    seen = _run("torch.set_num_threads")
    assert seen["threads"] == 2 and seen["tasks"] == seen["tasks_before"] + 1, seen
