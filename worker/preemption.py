"""Worker shutdown without losing training work: a running job checkpoints and goes back to the queue.

When a Celery worker is asked to stop (SIGTERM from Kubernetes or `ftaas up`), its main process sends
SIGUSR2 to its pool processes. A pool process running a training job sets the preemption flag, which the
job's control reads after the current optimizer step: the trainer saves a full checkpoint, the runner
releases the job (`running -> queued`, not counted as a failed attempt), and another worker resumes it.
A pool process that receives SIGTERM directly does the same while it runs a job (its whole process group
was signalled; or its worker lost the broker connection and terminates the task it can no longer
acknowledge), and otherwise exits as SIGTERM normally makes it.

The handlers are (re)installed when a job starts, in the process and thread that runs it: billiard resets a
pool process's signal handlers *after* Celery's `worker_process_init` runs (`reset_signals` in
`Worker.after_fork`), so handlers installed at process start are gone by the time a task runs.

SIGUSR1 is not used: billiard raises soft time limits in pool processes with it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

NOTICE = signal.SIGUSR2

_requested = threading.Event()
_running = threading.Event()


def install_in_pool_process() -> None:
    """Call once in each pool process (Celery's worker_process_init): the notice is ignored while the
    process runs no job.

    Ignored, not handled: billiard's threaded pool (the one the embedded transport uses) then turns every
    terminate-like signal of its children, SIGUSR2 included, into its own exit handler, and leaves only an
    ignored signal alone. A child told twice to exit (SIGTERM to the process group, then this notice) calls
    `os._exit` from the second handler, possibly while it holds the result queue's lock for its last
    message, and the worker's main process then waits on that lock for ever: seen as an idle worker that
    never stopped on SIGTERM, about once in 25 stops on a loaded machine."""
    signal.signal(NOTICE, signal.SIG_IGN)
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
    """While a job runs in this process: the event is set when the worker is shutting down (SIGUSR2 from the
    worker's main process, or SIGTERM to this one). The process's own handlers are restored afterwards."""
    _requested.clear()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
        for signum in (NOTICE, signal.SIGTERM):
            previous[signum] = signal.signal(signum, _on_signal)
    _running.set()
    try:
        yield _requested
    finally:
        _running.clear()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def notify_pool_processes() -> None:
    """From the worker's main process when it starts shutting down (Celery's worker_shutting_down)."""
    import psutil

    for child in psutil.Process().children():
        try:
            os.kill(child.pid, NOTICE)
        except ProcessLookupError:
            pass
