"""Worker shutdown without losing training work: a running job checkpoints and goes back to the queue.

When a Celery worker is asked to stop (SIGTERM from Kubernetes or `ftaas up`), its main process sends
SIGUSR2 to its pool processes. A pool process running a training job sets the preemption flag, which the
job's control reads after the current optimizer step: the trainer saves a full checkpoint, the runner
releases the job (`running -> queued`, not counted as a failed attempt), and another worker resumes it.
A pool process that receives SIGTERM directly (its whole process group was signalled) does the same while
it runs a job, and otherwise exits as SIGTERM normally makes it.

SIGUSR1 is not used: billiard raises soft time limits in pool processes with it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

NOTICE = signal.SIGUSR2

_requested = threading.Event()
_running = threading.Event()


def install_in_pool_process() -> None:
    """Call once in each pool process (Celery's worker_process_init)."""
    signal.signal(NOTICE, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def _on_signal(signum: int, _frame: object) -> None:
    if _running.is_set():
        log.warning("shutdown requested: the running job will checkpoint and return to the queue")
        _requested.set()
    elif signum == signal.SIGTERM:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


@contextmanager
def preemptible() -> Iterator[threading.Event]:
    """While a job runs in this process: the event is set when the worker is shutting down."""
    _requested.clear()
    _running.set()
    try:
        yield _requested
    finally:
        _running.clear()


def notify_pool_processes() -> None:
    """From the worker's main process when it starts shutting down (Celery's worker_shutting_down)."""
    import psutil

    for child in psutil.Process().children():
        try:
            os.kill(child.pid, NOTICE)
        except ProcessLookupError:
            pass
