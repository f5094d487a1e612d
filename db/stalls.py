"""A client-side deadline on every PostgreSQL round trip, so that a stalled database costs a request a prompt
`DatabaseUnavailable` (a retryable 503) instead of a hang.

Why our own: the server's `statement_timeout` only helps when the statement reaches a server that answers;
when the server or the route to it hangs (connections open, nothing flowing), libpq waits on the socket
without limit, and TCP's `tcp_user_timeout` does not fire while something on the path (a proxy, a load
balancer, a sidecar) keeps acknowledging. psycopg has no per-statement client timeout in its public API.

How: an operation (a statement, a commit, a rollback) arms a deadline for its connection; finishing it
disarms it. One daemon thread watches the deadlines; when one passes while the connection is still waiting
on the server (libpq's transaction status ACTIVE), it shuts the connection's socket down. The waiting
thread then sees the connection closed, psycopg raises `OperationalError`, SQLAlchemy invalidates the
connection (and the pool, as for any disconnect), and `Database` turns it into `DatabaseUnavailable`.
The deadline sits above the server's statement timeout, so a slow statement on a healthy server still ends
with the server's own cancellation, which keeps the connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import ExceptionContext

log = logging.getLogger(__name__)

#: an execution option that exempts a connection (migrations: DDL on a large table may legitimately run long)
UNBOUNDED = "ftaas_unbounded"


class StallGuard:
    """Watches the PostgreSQL connections of one engine; `install()` hooks it in."""

    def __init__(self, deadline_seconds: float) -> None:
        self.deadline_seconds = deadline_seconds
        self._armed: dict[int, tuple[float, Any]] = {}  # id(driver connection) -> (deadline, driver connection)
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._wakes_at = 0.0
        self.severed = 0  # connections shut down so far (for the log and the tests)

    def install(self, engine: Engine) -> None:
        @event.listens_for(engine, "before_cursor_execute")
        def _statement(conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any,
                       executemany: bool) -> None:
            if not conn.get_execution_options().get(UNBOUNDED):
                self.arm(cursor.connection)

        @event.listens_for(engine, "after_cursor_execute")
        def _statement_done(conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any,
                            executemany: bool) -> None:
            self.disarm(cursor.connection)

        @event.listens_for(engine, "handle_error")
        def _failed(context: ExceptionContext) -> None:
            if context.connection is not None and not context.connection.invalidated:
                with contextlib.suppress(Exception):
                    self.disarm(context.connection.connection.dbapi_connection)

        # Commit and rollback are round trips too; no event follows them, so they stay armed until the next
        # operation re-arms or the deadline passes, when the connection is idle and left alone.
        @event.listens_for(engine, "commit")
        @event.listens_for(engine, "rollback")
        def _ending(conn: Connection) -> None:
            if not conn.get_execution_options().get(UNBOUNDED):
                with contextlib.suppress(Exception):
                    self.arm(conn.connection.dbapi_connection)

        @event.listens_for(engine.pool, "reset")
        def _returned(dbapi_connection: Any, record: Any, reset_state: Any) -> None:
            self.arm(dbapi_connection)  # the pool's rollback on return

        @event.listens_for(engine.pool, "checkin")
        def _checked_in(dbapi_connection: Any, record: Any) -> None:
            if dbapi_connection is not None:
                self.disarm(dbapi_connection)

    def arm(self, driver_connection: Any) -> None:
        with self._changed:
            deadline = time.monotonic() + self.deadline_seconds
            self._armed[id(driver_connection)] = (deadline, driver_connection)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="db-stall-guard", daemon=True)
                self._thread.start()
            if deadline < self._wakes_at:  # wake the watcher only when it would sleep past this deadline
                self._changed.notify()

    def disarm(self, driver_connection: Any) -> None:
        with self._changed:
            self._armed.pop(id(driver_connection), None)

    def _watch(self) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                for key in [key for key, (deadline, _) in self._armed.items() if deadline <= now]:
                    connection = self._armed.pop(key)[1]
                    # Under the lock: an operation that began meanwhile re-armed its connection (a fresh
                    # deadline), so an ACTIVE connection here is still in the operation that expired.
                    if _waiting_on_server(connection):
                        self.severed += 1
                        log.warning("database: no answer within %.0f s; closing the connection",
                                    self.deadline_seconds)
                        _shut_down(connection)
                self._wakes_at = max(now + 0.05, min((d for d, _ in self._armed.values()), default=now + 60))
                self._changed.wait(self._wakes_at - now)


def _waiting_on_server(connection: Any) -> bool:
    from psycopg.pq import TransactionStatus

    try:
        return connection.info.transaction_status == TransactionStatus.ACTIVE
    except Exception:  # closed meanwhile
        return False


def _shut_down(connection: Any) -> None:
    """Shut the socket down under libpq (a duplicate descriptor: the connection keeps and closes its own)."""
    try:
        duplicate = socket.socket(fileno=os.dup(connection.pgconn.socket))
    except Exception:  # closed meanwhile
        return
    with duplicate, contextlib.suppress(OSError):
        duplicate.shutdown(socket.SHUT_RDWR)
