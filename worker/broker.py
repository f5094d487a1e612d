"""The embedded broker: a kombu SQLAlchemy transport on a SQLite file, so `ftaas up` needs no server.

Selected by broker URLs `ftaas-embedded+sqlite:///<path>`. kombu's own SQLAlchemy transport claims
messages inside `BEGIN IMMEDIATE` on SQLite, so each message goes to one consumer. Its default polling
interval (1 s) would add a second of latency per message; 0.1 s keeps dispatch snappy at negligible cost.
Messages are only wake-up calls (the database is the truth), so this broker's weaker guarantees (an
unacknowledged message held by a killed worker is not redelivered) are covered by the reaper.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as kombu_sqlalchemy

from contracts.settings import EMBEDDED_BROKER_SCHEME


class EmbeddedTransport(kombu_sqlalchemy.Transport):
    polling_interval = 0.1

    def drain_events(self, connection: Any, timeout: float | None = None) -> Any:
        # Celery drives transports without file descriptors with a blocking loop that checks for shutdown
        # only between drains of up to 2 s, which an idle virtual transport sleeps out entirely. A short
        # drain lets a worker stop promptly (measured: 6-7 s to exit on SIGTERM before; docs/benchmarks.md, "Measurements behind code comments").
        return super().drain_events(connection, timeout=0.25 if timeout is None else min(timeout, 0.25))


TRANSPORT_ALIASES[EMBEDDED_BROKER_SCHEME] = "worker.broker:EmbeddedTransport"


def prepare_embedded_broker(broker_url: str) -> None:
    """Create the broker file in WAL mode so that publishers and consumers do not block each other."""
    path = Path(broker_url.split(":///", 1)[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
    finally:
        connection.close()
