"""The python grader sandbox contains every escape: a grader that reads secrets, opens sockets, forks, runs
forever, allocates 10 GB, floods its output or crashes gets a grader error (or finds nothing), in bounded time
and memory, and the process that ran it carries on.

Each case runs the real sandbox (namespaces, seccomp, limits) on this machine. The secrets it must not reach
are real: an environment variable of this process, a file in a data folder, this process's /proc entry, and a
TCP server listening on loopback that must see no connection.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from graders.sandbox import PythonSandbox, SandboxLimits, unavailable_reason


def _user_namespaces_refused() -> bool:
    return subprocess.run(["unshare", "--user", "--map-root-user", "true"], capture_output=True,
                          check=False).returncode != 0


pytestmark = pytest.mark.skipif(_user_namespaces_refused(),
                                reason="the kernel refuses user namespaces here, so python graders cannot run")

SECRET = "ftaas-test-secret-7d1c"
LIMITS = SandboxLimits(timeout_seconds=3.0, memory_bytes=512 << 20)


def run(source: str, calls: int = 1, limits: SandboxLimits = LIMITS) -> tuple[list, float]:
    started = time.monotonic()
    outcomes = PythonSandbox(source, limits).run([({"output_text": "x"}, {"n": n}) for n in range(calls)])
    return outcomes, time.monotonic() - started


def assert_contained(outcomes: list, words: str) -> None:
    for outcome in outcomes:
        assert outcome.reward is None and outcome.error == "runtime", outcome
        assert words in (outcome.details or ""), outcome.details


def test_this_machine_can_run_the_sandbox() -> None:
    assert unavailable_reason() is None


def test_a_grader_computes_rewards_from_sample_and_item() -> None:
    outcomes, seconds = run("def grade(sample, item):\n    return item['n'] + len(sample['output_text'])\n", 3)
    assert [o.reward for o in outcomes] == [1.0, 2.0, 3.0]
    assert seconds < 5


def test_the_environment_holds_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTAAS_STORAGE_SECRET_KEY", SECRET)
    outcomes, _ = run("import os\ndef grade(s, i):\n"
                      f"    return float(any('{SECRET}' in v for v in os.environ.values()) or 'FTAAS' in str(os.environ))\n")
    assert outcomes[0].reward == 0.0


def test_the_service_files_are_not_there(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "credentials").write_text(SECRET)
    outcomes, _ = run(f"def grade(s, i):\n    return float(len(open({str(data / 'credentials')!r}).read()))\n")
    assert_contained(outcomes, "No such file or directory")
    outcomes, _ = run(f"def grade(s, i):\n    return float(len(open('/proc/{os.getpid()}/environ').read()))\n")
    assert_contained(outcomes, "No such file or directory")


def test_what_is_there_is_read_only() -> None:
    import sysconfig

    stdlib = sysconfig.get_paths()["stdlib"]
    outcomes, _ = run(f"def grade(s, i):\n    open({stdlib + '/os.py'!r}, 'a').write('#')\n    return 1.0\n")
    assert_contained(outcomes, "Read-only file system")


def test_no_socket_reaches_a_server_on_this_machine() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(5)
    port = server.getsockname()[1]
    accepted: list[socket.socket] = []

    def accept() -> None:
        try:
            accepted.append(server.accept()[0])
        except OSError:  # timed out or closed: nothing connected
            pass

    threading.Thread(target=accept, daemon=True).start()
    try:
        outcomes, _ = run("import socket\ndef grade(s, i):\n"
                          f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'{SECRET}')\n"
                          "    return 1.0\n")
        assert_contained(outcomes, "Operation not permitted")
        time.sleep(0.5)
        assert accepted == []
    finally:
        server.close()


@pytest.mark.parametrize("source", [
    "import os\ndef grade(s, i):\n    os.fork()\n    return 1.0\n",
    "import subprocess\ndef grade(s, i):\n    subprocess.run(['id'])\n    return 1.0\n",
    "import multiprocessing\ndef grade(s, i):\n    p = multiprocessing.Process(target=print)\n    p.start()\n    return 1.0\n",
    "import os\ndef grade(s, i):\n    os.execv('/bin/sh', ['sh'])\n",
], ids=["fork", "subprocess", "multiprocessing", "exec"])
def test_no_new_process_starts(source: str) -> None:
    outcomes, seconds = run(source)
    assert outcomes[0].error == "runtime"
    assert any(words in (outcomes[0].details or "") for words in ("Operation not permitted", "No such file"))
    assert seconds < 5


def test_threads_still_work() -> None:
    outcomes, _ = run("import threading\ndef grade(s, i):\n    out = []\n"
                      "    t = threading.Thread(target=out.append, args=(0.5,))\n    t.start(); t.join()\n"
                      "    return out[0]\n")
    assert outcomes[0].reward == 0.5


def test_a_grader_that_runs_forever_is_stopped_at_its_deadline_and_the_next_call_still_runs() -> None:
    source = "def grade(s, i):\n    while i['n'] == 0:\n        pass\n    return 1.0\n"
    outcomes, seconds = run(source, calls=2)
    assert outcomes[0].error == "runtime" and "did not return within 3 s" in (outcomes[0].details or "")
    assert outcomes[1].reward == 1.0
    assert seconds < LIMITS.timeout_seconds + 3, f"took {seconds:.1f} s"


def test_ten_gigabytes_are_refused_within_the_memory_limit() -> None:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    outcomes, seconds = run("def grade(s, i):\n    block = bytearray(10 * 1024 ** 3)\n    return 1.0\n")
    assert_contained(outcomes, "MemoryError")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert peak_kib == before or peak_kib < LIMITS.memory_bytes // 1024, f"a sandbox child peaked at {peak_kib} KiB"
    assert seconds < 5


def test_memory_filled_slowly_is_stopped_at_the_limit_too() -> None:
    outcomes, seconds = run("def grade(s, i):\n    chunks = []\n    while True:\n"
                            "        chunks.append(bytearray(16 * 1024 ** 2))\n")
    assert_contained(outcomes, "MemoryError")
    assert seconds < 5


def test_output_floods_are_bounded() -> None:
    limits = SandboxLimits(timeout_seconds=3.0, max_output_bytes=4096)
    outcomes, _ = run("import os\ndef grade(s, i):\n    os.write(1, b'x' * 10**7)\n    print('y' * 10**7)\n"
                      "    return 1.0\n", limits=limits)
    assert outcomes[0].reward == 1.0  # what user code prints goes nowhere
    outcomes, _ = run("def grade(s, i):\n    raise ValueError('z' * 10**6)\n", limits=limits)
    assert outcomes[0].error == "runtime" and len(outcomes[0].details or "") <= 4096
    outcomes, _ = run("def grade(s, i):\n    open('/tmp/big', 'wb').write(b'0' * (64 << 20))\n    return 1.0\n")
    assert_contained(outcomes, "File too large")


def test_a_crash_is_the_call_s_error_and_later_calls_run() -> None:
    source = "import ctypes\ndef grade(s, i):\n    if i['n'] == 0:\n        ctypes.string_at(0)\n    return 2.0\n"
    outcomes, _ = run(source, calls=2)
    assert outcomes[0].error == "runtime" and "ended early" in (outcomes[0].details or "")
    assert outcomes[1].reward == 2.0


@pytest.mark.parametrize("source, words", [
    ("def grade(s, i) return 1\n", "SyntaxError"),
    ("x = 1\n", "defines no function grade"),
    ("def grade(s, i):\n    return 'high'\n", "must return a number"),
    ("def grade(s, i):\n    return float('nan')\n", "not a finite number"),
    ("import os\nos._exit(3)\ndef grade(s, i):\n    return 1.0\n", "ended early"),
])
def test_broken_graders_are_errors_never_crashes(source: str, words: str) -> None:
    outcomes, seconds = run(source, calls=2)
    assert all(o.error == "runtime" and words in (o.details or "") for o in outcomes), outcomes
    assert seconds < 5


def test_the_sandbox_cannot_signal_the_service() -> None:
    outcomes, _ = run(f"import os, signal\ndef grade(s, i):\n    os.kill({os.getpid()}, signal.SIGKILL)\n"
                      "    return 1.0\n")
    assert outcomes[0].error == "runtime"  # no such process in its PID namespace; this test still runs
