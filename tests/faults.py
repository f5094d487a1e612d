"""A TCP proxy the tests control, put in front of a real dependency (PostgreSQL, Redis, the S3 server) to
inject the faults of a network: `cut()` resets every connection and refuses new ones (the service is down),
`stall()` keeps connections open but forwards nothing (a hung service or a black-holed route), `restore()`
forwards again. Plain sockets and threads: what the code under test sees is a real network failure."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._mode = "up"
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -------------------------------------------------------------------------------------- faults
    def cut(self) -> None:
        """Reset every connection; new ones are reset at once (as a stopped service's host answers)."""
        with self._lock:
            self._mode = "cut"
            connections, self._connections = self._connections, set()
        self._flowing.set()
        for connection in connections:
            _reset(connection)

    def stall(self) -> None:
        """Keep every connection open and forward nothing, in either direction."""
        with self._lock:
            self._mode = "stall"
        self._flowing.clear()

    def restore(self) -> None:
        with self._lock:
            self._mode = "up"
        self._flowing.set()

    @contextlib.contextmanager
    def outage(self, kind: str = "cut") -> Iterator[None]:
        getattr(self, kind)()
        try:
            yield
        finally:
            self.restore()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()

    # ------------------------------------------------------------------------------------ plumbing
    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                mode = self._mode
            if mode == "cut":
                _reset(client)
                continue
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self._flowing.wait()  # a stalled proxy holds new connections too
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            _reset(client)
            return
        with self._lock:
            if self._mode == "cut":
                _reset(client)
                _reset(upstream)
                return
            self._connections.update((client, upstream))
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._flowing.wait()
                with self._lock:
                    if source not in self._connections:
                        return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._connections.discard(source)
                self._connections.discard(sink)


def _reset(connection: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a dead peer's host answers, rather than an orderly FIN."""
    with contextlib.suppress(OSError):
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        connection.close()
