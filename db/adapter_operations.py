"""Adapter operations: their rows and the lease state machine they share with knowledge evals (db.leased)."""

from __future__ import annotations

from db import outbox
from db.leased import LeasedQueue
from db.tables import AdapterOperation

QUEUE: LeasedQueue[AdapterOperation] = LeasedQueue(AdapterOperation, outbox.RUN_ADAPTER_OPERATION,
                                                   noun="adapter operation", param="operation_id", webhook_kind="adapter_operation")
