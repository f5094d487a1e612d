"""A TCP proxy the tests control, put in front of a real dependency (PostgreSQL, Redis, the S3 server) to
inject the faults of a network: `cut()` resets every connection and refuses new ones (the service is down),
`stall()` keeps connections open but forwards nothing (a hung service or a black-holed route), `restore()`
forwards again. Plain sockets and threads: what the code under test sees is a real network failure.

`FaultProxy` is the same idea one layer up, for HTTP: it answers chosen requests to a live server with an
error status or a garbled body.

`RedisServer` is a private redis-server the tests may restart: a restart loses everything it held (no
persistence), as a broker that crashed without its data does."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx


class TcpProxy:
    @classmethod
    def in_front_of(cls, url: str) -> tuple[TcpProxy, str]:
        """A proxy to the service at `url` (postgresql://, redis://, http://), and `url` pointing at the proxy
        (user name, path and query kept)."""
        parsed = urlsplit(url)
        default_port = {"redis": 6379, "http": 80}.get(parsed.scheme, 5432)
        proxy = cls(parsed.hostname or "127.0.0.1", parsed.port or default_port)
        user = f"{parsed.username}@" if parsed.username else ""
        return proxy, urlunsplit(parsed._replace(netloc=user + proxy.address))

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


class RedisServer:
    """redis-server on a free port of 127.0.0.1, configured as ftaas requires (noeviction), with no persistence."""

    def __init__(self, work_dir: Path) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not installed")
        self._command = [executable, "--port", "0", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                         "--maxmemory-policy", "noeviction", "--dir", str(work_dir)]
        with socket.socket() as probe:  # a free port, kept across restarts
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._command[2] = str(self.port)
        self._process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self._process = subprocess.Popen(self._command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        """Gone at once, with everything it held (SIGKILL: no shutdown, no save)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    @contextlib.contextmanager
    def restarted(self) -> Iterator[None]:
        """Down inside the block, up again (empty) after it."""
        self.kill()
        try:
            yield
        finally:
            self.start()


class FaultProxy:
    """An HTTP proxy in front of a live server: forwards every request to `upstream`; `fail(path_part, status,
    times)` answers the next matching requests with that status instead (a 429 with `retry_after`'s header),
    `corrupt(path_part)` sends a file's content with one line garbled."""

    def __init__(self, upstream: str) -> None:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        self.upstream = upstream
        # [path part, status or "corrupt", times left, matches to let pass, extra headers]
        self.faults: list[list[Any]] = []
        self.seen: list[tuple[str, str, int]] = []

        async def forward(request: Request) -> Response:
            path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            for fault in self.faults:
                if fault[0] in path and fault[3] > 0:
                    fault[3] -= 1
                elif fault[0] in path and fault[2] > 0:
                    fault[2] -= 1
                    if fault[1] == "corrupt":
                        break
                    self.seen.append((request.method, path, fault[1]))
                    return Response(json.dumps({"error": {"message": "injected", "type": "server_error",
                                                          "param": None, "code": None}}),
                                    status_code=fault[1], media_type="application/json", headers=fault[4])
            else:
                fault = None
            async with httpx.AsyncClient(base_url=self.upstream, timeout=60) as client:
                answer = await client.request(request.method, path, content=await request.body(),
                                              headers={k: v for k, v in request.headers.items() if k != "host"})
            self.seen.append((request.method, path, answer.status_code))
            body = answer.content
            if fault is not None:  # a corrupted download: the first line is no longer JSON, the length unchanged
                first, _, rest = body.partition(b"\n")
                body = b"{" * len(first) + b"\n" + rest
            headers = {k: v for k, v in answer.headers.items() if k.lower() not in ("content-length", "content-encoding",
                                                                                    "transfer-encoding")}
            return Response(body, status_code=answer.status_code, headers=headers)

        app = Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST", "DELETE"])])
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        threading.Thread(target=self.server.run, daemon=True).start()
        while not self.server.started:
            time.sleep(0.02)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def fail(self, path_part: str, status: int, times: int = 1, *, after: int = 0,
             retry_after: float | None = None) -> None:
        """The next `times` requests whose path holds `path_part` get `status`, once `after` of them passed."""
        headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else {}
        self.faults.append([path_part, status, times, after, headers])

    def corrupt(self, path_part: str) -> None:
        self.faults.append([path_part, "corrupt", 10, 0, {}])

    def requests_to(self, method: str, path_part: str) -> int:
        return sum(m == method and path_part in p for m, p, _ in self.seen)

    def close(self) -> None:
        self.server.should_exit = True
