"""Waiting out a dependency outage where the work is: inside the worker, with its files still on disk.

A storage, database or broker error (`InfrastructureError`) in a step a worker can repeat (download the
inputs, publish a checkpoint, upload the finished adapter, write the final transaction) is retried with
exponential backoff and full jitter (0.5 s doubling to `outage_max_retry_delay_seconds`, 30 s by default,
each delay drawn uniformly below its cap, so that many workers do not retry in step), for as long as
`outage_deadline_seconds` allows. The job keeps its lease and its attempts: a finished training retries its
upload, it never trains again because an upload failed. Past the deadline the step raises
`DependencyOutage`, which fails the work with that code. A lease found lost while waiting (the job was
cancelled) ends the wait at once.

How long the database may be down without costing the job its lease: the lease keeper renews every
`lease_ttl_seconds / 3`, so an outage shorter than two thirds of the TTL (40 s by default) is survived; a
longer one lets the reaper hand the job to another worker, which resumes from the last checkpoint.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from contracts.errors import (
    BrokerUnavailable,
    DatabaseUnavailable,
    DependencyOutage,
    InfrastructureError,
    LeaseLost,
    StorageUnavailable,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

#: ftaas's own dependencies, whose outages a worker waits out; a service the operator points ftaas at (an
#: external eval judge) is not one: its errors spend the work's attempts and fail it in bounded time.
OWN_DEPENDENCIES: tuple[type[InfrastructureError], ...] = (StorageUnavailable, DatabaseUnavailable, BrokerUnavailable)

#: `patiently(call, what)`: `call()` under `ride_out` with the work's policy and lease (see `patiently`)
Patiently = Callable[[Callable[[], Any], str], Any]


@dataclass(frozen=True)
class OutagePolicy:
    deadline_seconds: float
    first_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, retry: int, rng: random.Random) -> float:
        """Full jitter: uniform below min(max_delay, first_delay * 2**retry)."""
        return rng.uniform(0, min(self.max_delay, self.first_delay * 2 ** retry))


def ride_out(call: Callable[[], T], *, what: str, policy: OutagePolicy, alive: Callable[[], bool] = lambda: True,
             sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None,
             retry_on: tuple[type[InfrastructureError], ...] = (InfrastructureError,)) -> T:
    """`call()`, repeated through `retry_on` errors (InfrastructureErrors by default) until it succeeds or
    the deadline passes.

    Other errors pass through at once. `alive()` is asked before each wait; False raises LeaseLost.
    """
    rng = rng or random.Random()
    started = time.monotonic()
    retry = 0
    while True:
        try:
            return call()
        except retry_on as exc:
            waited = time.monotonic() - started
            if waited >= policy.deadline_seconds:
                raise DependencyOutage(f"{what} failed for {waited:.0f} s, past the worker's outage deadline of "
                                       f"{policy.deadline_seconds:.0f} s: {exc.public_message}") from exc
            if not alive():
                raise LeaseLost(f"the lease was lost while waiting to {what}") from exc
            delay = min(policy.delay(retry, rng), max(0.0, policy.deadline_seconds - waited))
            log.warning("%s: %s (%s); retrying in %.1f s", what, exc.code, exc, delay)
            sleep(delay)
            retry += 1


def patiently(policy: OutagePolicy, *, alive: Callable[[], bool] = lambda: True) -> Patiently:
    """A work's `patiently(call, what)`: `ride_out` through outages of ftaas's own dependencies
    (`OWN_DEPENDENCIES`), under `policy`, while `alive()`."""
    return lambda call, what: ride_out(call, what=what, policy=policy, alive=alive, retry_on=OWN_DEPENDENCIES)
