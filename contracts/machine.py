"""How the processes of one machine share its cores: a thread plan, and an activity board through which each
process learns what else is computing.

Why: every thread pool on the machine (the serving engine's, a training job's, an eval's) sized itself to every
core. On a 2-core machine a chat stream and a training job then ran four threads on two cores, and at every
parallel region each OpenMP team waited for a thread the other process had descheduled: one chat stream fell
from 41.9 to 4.8 tokens/s while a job trained (docs/benchmarks.md, "One machine, serving and training"). With a
plan, each kind of work has a thread budget for when it computes alone and one for when it shares the machine,
and each process sets its threads, between units of work (an engine iteration, a training step's layer), to the budget
that applies now.

Two kinds of work: `serving` (the API process's engine: a person waits on it) and `batch` (training jobs,
evals, adapter operations: they wait on nobody). While both compute, serving keeps `serving_share` of the cores
and batch work the rest; either alone takes them all.

The board is a directory of files, one per kind of work, whose modification time says when that work was last
seen computing; processes of one machine (and one `ftaas up`) share it. Nothing here imports torch: the callers
apply the numbers (`torch.set_num_threads`) in the thread that computes.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["serving", "batch"]
KINDS: tuple[Kind, ...] = ("serving", "batch")
OTHER: dict[Kind, Kind] = {"serving": "batch", "batch": "serving"}

#: A kind of work marked within this many seconds is computing. Long enough to bridge the gaps between one
#: person's chat requests (and a training step's pauses), short enough that training takes the machine back a
#: step or two after a chat ends.
ACTIVE_WINDOW_SECONDS = 2.0
#: How often a process marks its own work and looks at the others' (a stat and at most one utime).
CHECK_INTERVAL_SECONDS = 0.25


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity; a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ThreadPlan:
    """Intra-op threads for each kind of work, alone and while the other kind computes."""

    cores: int
    serving_alone: int
    serving_shared: int
    batch_alone: int
    batch_shared: int
    #: False: no board, every process keeps its `*_alone` budget (sharing is off, or the kinds never meet).
    sharing: bool

    def budget(self, kind: Kind, *, other_active: bool) -> int:
        if kind == "serving":
            return self.serving_shared if other_active and self.sharing else self.serving_alone
        return self.batch_shared if other_active and self.sharing else self.batch_alone

    def as_dict(self) -> dict[str, int | bool]:
        return asdict(self)

    def describe(self) -> str:
        cores = f"{self.cores} core{'s' if self.cores > 1 else ''}"
        if not self.sharing:
            return (f"{cores}: serving {self.serving_alone} threads, batch work {self.batch_alone} "
                    "threads (no sharing)")
        return (f"{cores}: serving {self.serving_alone} threads alone / {self.serving_shared} beside "
                f"batch work; batch work (training, evals) {self.batch_alone} alone / {self.batch_shared} beside "
                "serving")


def plan_threads(cores: int, *, sharing: bool, serving_share: float = 0.5, serving_threads: int | None = None,
                 batch_threads: int | None = None) -> ThreadPlan:
    """The plan for `cores` cores. Pinned counts (`serving_threads`, `batch_threads`) hold alone and shared.
    Shared budgets never add up to more than the cores (one thread each on one core: no team waits on another)."""
    cores = max(1, cores)
    serving_shared = min(cores, max(1, round(cores * serving_share)))
    batch_shared = max(1, cores - serving_shared) if cores > 1 else 1
    if cores > 1 and serving_shared + batch_shared > cores:
        serving_shared = cores - batch_shared
    return ThreadPlan(cores=cores,
                      serving_alone=serving_threads or cores, serving_shared=serving_threads or serving_shared,
                      batch_alone=batch_threads or cores, batch_shared=batch_threads or batch_shared,
                      sharing=sharing)


class ActivityBoard:
    """`directory/<kind>.active`: its modification time is when that kind of work was last seen computing."""

    def __init__(self, directory: Path, *, window: float = ACTIVE_WINDOW_SECONDS) -> None:
        self.directory = directory
        self.window = window
        directory.mkdir(parents=True, exist_ok=True)

    def _path(self, kind: Kind) -> Path:
        return self.directory / f"{kind}.active"

    def mark(self, kind: Kind) -> None:
        path = self._path(kind)
        try:
            os.utime(path)
        except FileNotFoundError:
            path.touch()

    def active(self, kind: Kind, *, now: float | None = None) -> bool:
        try:
            seen = self._path(kind).stat().st_mtime
        except FileNotFoundError:
            return False
        return (now if now is not None else time.time()) - seen <= self.window


class ThreadGovernor:
    """How many threads this process's work of one kind may use now (`threads()`, called between units of
    work), marking its own work on the board. Without a board: always the `alone` budget.

    `working()` marks the work as computing for as long as the block runs (a thread marks it every
    CHECK_INTERVAL_SECONDS), for work whose units are long (a training step of several seconds); the engine
    instead calls `threads(busy=True)` once per iteration.
    """

    def __init__(self, plan: ThreadPlan, kind: Kind, board: ActivityBoard | None, *, fixed: bool = False,
                 interval: float = CHECK_INTERVAL_SECONDS) -> None:
        """`fixed`: always the shared budget (the work still marks itself, so the other kind yields): for
        batch-invariant engines, whose results must not depend on what else runs, since a matrix product's
        result can depend on the thread count (measured: a 64-row product with 1,536-long rows differs in its
        last bits between one and two threads)."""
        self.plan = plan
        self.kind = kind
        self.board = board if plan.sharing else None
        self.fixed = fixed
        self.interval = interval
        self._checked = -interval
        self._current = plan.budget(kind, other_active=fixed)
        self.shared = False

    def fixed_count(self) -> ThreadGovernor:
        """The same budgets, fixed at the shared one (see `__init__`)."""
        return ThreadGovernor(self.plan, self.kind, self.board, fixed=True, interval=self.interval)

    def threads(self, *, busy: bool = True) -> int:
        """The budget now; `busy`: this work is computing (marked on the board)."""
        if self.board is None:
            return self._current
        now = time.monotonic()
        if now - self._checked >= self.interval:
            self._checked = now
            if busy:
                self.board.mark(self.kind)
            self.shared = self.board.active(OTHER[self.kind])
            if not self.fixed:
                self._current = self.plan.budget(self.kind, other_active=self.shared)
        return self._current

    @contextmanager
    def working(self) -> Iterator[None]:
        if self.board is None:
            yield
            return
        board, kind = self.board, self.kind
        stop = threading.Event()

        def keep_marking() -> None:
            while not stop.wait(self.interval):
                board.mark(kind)

        board.mark(kind)
        marker = threading.Thread(target=keep_marking, name=f"ftaas-{kind}-activity", daemon=True)
        marker.start()
        try:
            yield
        finally:
            stop.set()
            marker.join(timeout=1)
