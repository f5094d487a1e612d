"""The python grader sandbox: a user's `grade(sample, item)` run where it can read no secret, reach no network,
start no process and outlast no deadline.

Each batch of calls runs in one child process (`graders/sandbox_child.py`, which sets the isolation up before
reading the user's code) started by util-linux's `unshare` in fresh user, mount, PID, network, IPC and UTS
namespaces. Inside: a read-only root holding only the interpreter's libraries and the system's shared
libraries, an empty environment, no network interfaces but a down loopback, resource limits, a seccomp filter
against new processes, sockets, mounts and other escapes, and no capabilities (the child's docstring lists it
all). The service's data folder, configuration, credentials, other tenants' files and /proc are not in its
root. The parent enforces the wall-clock deadline per call and reads at most `max_output_bytes` per result.

A call that raises, returns something that is not a finite number, exceeds its deadline, memory or CPU, or
makes the child die is that call's error (OpenAI's `python_grader_runtime_error`); the calls after it run in a
fresh child. A machine where the namespaces cannot be made (a container without user namespaces) cannot run
python graders: `unavailable_reason` says so, and such graders are refused when validated.

Limits, stated honestly: the child shares the kernel with the service (a kernel exploit escapes any such
sandbox; use gVisor or a VM-isolated worker pool where tenants are hostile), it can read the system's
shared libraries and the interpreter's installed packages, and it competes for CPU with the worker while it
runs (bounded by the deadline).
"""

from __future__ import annotations

import functools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHILD = Path(__file__).with_name("sandbox_child.py")
UNSHARE_FLAGS = ("--user", "--map-root-user", "--net", "--mount", "--pid", "--ipc", "--uts", "--fork",
                 "--kill-child")
#: Folders of shared libraries that extension modules link against, bound read-only when present.
SYSTEM_LIBRARIES = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib")


@dataclass(frozen=True)
class SandboxLimits:
    """What one grader call may use. `timeout_seconds` is wall-clock per call (the child's CPU limit is the
    batch's total); `memory_bytes` is the child's address space; `max_output_bytes` bounds each result line."""

    timeout_seconds: float = 10.0
    memory_bytes: int = 1 << 30
    max_output_bytes: int = 64 * 1024
    tmp_bytes: int = 16 << 20
    #: How long the child may take to come up (interpreter start, namespaces, filter) before any user code.
    startup_seconds: float = 10.0


@dataclass(frozen=True)
class CallOutcome:
    """A call's reward, or `error` ("runtime": the user's code failed or broke a limit; "server": the sandbox
    itself could not run) with `details` for the user."""

    reward: float | None = None
    error: str | None = None
    details: str | None = None
    seconds: float = 0.0


def library_paths() -> list[str]:
    """The interpreter's library folders (stdlib, compiled stdlib, site-packages) and the system's shared
    libraries: everything the child may read."""
    paths = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths |= {path for path in SYSTEM_LIBRARIES if os.path.isdir(path) and not os.path.islink(path)}
    return sorted(paths)


@functools.cache
def unavailable_reason() -> str | None:
    """Why this machine cannot isolate python graders (None: it can). Probed once per process by starting an
    empty sandbox."""
    if sys.platform != "linux":
        return f"python graders need Linux namespaces; this machine runs {sys.platform}"
    if os.uname().machine not in ("x86_64", "aarch64"):
        return f"python graders' seccomp filter knows x86_64 and aarch64, not {os.uname().machine}"
    if shutil.which("unshare") is None:
        return "python graders need util-linux's unshare, which is not installed"
    outcome = PythonSandbox("def grade(sample, item):\n    return 1.0\n", SandboxLimits(timeout_seconds=20))
    result = outcome.run([({}, {})])[0]
    if result.reward != 1.0:
        return f"this machine cannot create the python grader sandbox: {result.details}"
    return None


class PythonSandbox:
    """Runs one grader source over batches of (sample, item) calls."""

    def __init__(self, source: str, limits: SandboxLimits | None = None) -> None:
        self.source = source
        self.limits = limits or SandboxLimits()

    def run(self, calls: Sequence[tuple[Any, Any]]) -> list[CallOutcome]:
        """One outcome per call, in order. Never raises for what the user's code does."""
        outcomes: list[CallOutcome] = []
        while len(outcomes) < len(calls):
            outcomes += self._batch(calls[len(outcomes):])
        return outcomes

    def _batch(self, calls: Sequence[tuple[Any, Any]]) -> list[CallOutcome]:
        """Outcomes for a prefix of `calls` (at least one): all of them unless the child died or overran."""
        limits = self.limits
        root = tempfile.mkdtemp(prefix="ftaas-grader-")
        request = {"source": self.source, "calls": [{"sample": s, "item": i} for s, i in calls], "root": root,
                   "library_paths": library_paths(), "tmp_bytes": limits.tmp_bytes,
                   "memory_bytes": limits.memory_bytes, "max_output_bytes": limits.max_output_bytes,
                   "cpu_seconds": int(limits.timeout_seconds * len(calls) + limits.startup_seconds) + 1}
        command = ["unshare", *UNSHARE_FLAGS, "--", sys.executable, "-I", "-B", str(CHILD)]
        environment = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
                       "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        started = time.monotonic()
        try:
            child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=environment, cwd="/", start_new_session=True, close_fds=True)
        except OSError as exc:
            shutil.rmtree(root, ignore_errors=True)
            return [CallOutcome(error="server", details=f"the sandbox could not start: {exc}")]
        try:
            assert child.stdin is not None
            try:
                child.stdin.write(json.dumps(request).encode())
                child.stdin.close()
            except BrokenPipeError:
                pass
            return self._collect(child, len(calls), started)
        finally:
            _kill(child)
            shutil.rmtree(root, ignore_errors=True)

    def _collect(self, child: subprocess.Popen[bytes], count: int, started: float) -> list[CallOutcome]:
        limits = self.limits
        outcomes: list[CallOutcome] = []
        assert child.stdout is not None
        reader = _LineReader(child.stdout, limits.max_output_bytes + 2)
        ready = reader.read_line(started + limits.startup_seconds)
        if not isinstance(ready, bytes) or b'"ready"' not in ready:
            return [self._death(child, time.monotonic() - started, starting=True)]
        call_started = time.monotonic()
        deadline = call_started + limits.timeout_seconds
        while len(outcomes) < count:
            line = reader.read_line(deadline)
            now = time.monotonic()
            if line is _LineReader.TIMEOUT:
                outcomes.append(CallOutcome(error="runtime", seconds=now - call_started, details=(
                    f"grade() did not return within {limits.timeout_seconds:g} s (its deadline); it was stopped")))
                return outcomes
            if line is _LineReader.TOO_LONG:
                outcomes.append(CallOutcome(error="runtime", seconds=now - call_started, details=(
                    f"the grader's result exceeded {limits.max_output_bytes} bytes")))
                return outcomes
            if line is None:  # the child is gone
                outcomes.append(self._death(child, now - call_started))
                return outcomes
            outcomes.append(_decode(line, now - call_started))
            call_started, deadline = now, now + limits.timeout_seconds
        return outcomes

    def _death(self, child: subprocess.Popen[bytes], seconds: float, *, starting: bool = False) -> CallOutcome:
        """The outcome of a child that ended (or, `starting`, never came up) before answering."""
        if starting:
            _kill(child, close=False)
        try:
            code = child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        stderr = child.stderr.read(4096) if child.stderr is not None and code is not None else b""
        message = stderr.decode(errors="replace").strip()
        if starting:
            return CallOutcome(error="server", seconds=seconds,
                               details=f"the sandbox could not start: {message[-1000:] or f'status {code}'}")
        if code is not None and code < 0 and -code in (signal.SIGXCPU, signal.SIGKILL):
            reason = "it used up its CPU time" if -code == signal.SIGXCPU else "it was killed"
        elif code is not None and code in (128 + signal.SIGXCPU, 128 + signal.SIGKILL):
            reason = "it used up its CPU time" if code == 128 + signal.SIGXCPU else "it was killed"
        elif code is not None and code in (128 + signal.SIGSYS, -signal.SIGSYS):
            reason = "it made a system call the sandbox forbids"
        else:
            reason = f"it exited with status {code}" + (f": {message[-500:]}" if message else "")
        return CallOutcome(error="runtime", seconds=seconds, details=f"the grader process ended early: {reason}")


def _decode(line: bytes, seconds: float) -> CallOutcome:
    try:
        message = json.loads(line)
        if "reward" in message:
            return CallOutcome(reward=float(message["reward"]), seconds=seconds)
        return CallOutcome(error="runtime", details=str(message.get("details", ""))[:4000], seconds=seconds)
    except (ValueError, TypeError, AttributeError):
        return CallOutcome(error="runtime", details="the grader wrote an unreadable result", seconds=seconds)


class _LineReader:
    """Lines from a pipe with a deadline and a length bound, without blocking past the deadline."""

    TIMEOUT = object()
    TOO_LONG = object()

    def __init__(self, stream: Any, max_bytes: int) -> None:
        self._fd = stream.fileno()
        os.set_blocking(self._fd, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._fd, selectors.EVENT_READ)
        self._buffer = b""
        self._max = max_bytes
        self._eof = False

    def read_line(self, deadline: float) -> Any:
        while True:
            newline = self._buffer.find(b"\n")
            if newline != -1:
                line, self._buffer = self._buffer[:newline], self._buffer[newline + 1:]
                return line if len(line) <= self._max else self.TOO_LONG
            if len(self._buffer) > self._max:
                return self.TOO_LONG
            if self._eof:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._selector.select(remaining):
                return self.TIMEOUT
            chunk = os.read(self._fd, 65536)
            if not chunk:
                self._eof = True
            self._buffer += chunk


def _kill(child: subprocess.Popen[bytes], *, close: bool = True) -> None:
    """Stop the child's whole session (unshare, and with it every process in its PID namespace)."""
    if child.poll() is None:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process that survives SIGKILL
        pass
    for stream in (child.stdout, child.stderr) if close else ():
        if stream is not None:
            stream.close()
