"""The `ftaas` command line, run as a user would run it (subprocesses, real ports and files)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.servers import free_port, stop_process_group


def ftaas(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftaas.cli", *args], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=120, check=check)


def test_keys_are_created_listed_and_revoked(tmp_path: Path) -> None:
    env = {"FTAAS_DATA_DIR": str(tmp_path)}
    refused = ftaas("keys", "create", env=env, check=False)
    assert refused.returncode != 0 and "ftaas migrate" in refused.stderr
    assert "database at revision" in ftaas("migrate", env=env).stdout
    key = ftaas("keys", "create", "--project", "team-a", "--name", "ci", env=env).stdout.strip()
    assert key.startswith("sk-ftaas-") and len(key) > 40
    listing = ftaas("keys", "list", env=env).stdout
    assert "team-a" in listing and "active" in listing and key not in listing and key[-4:] in listing
    key_id = listing.split()[0]
    assert "revoked" in ftaas("keys", "revoke", key_id, env=env).stdout
    assert "revoked" in ftaas("keys", "list", "--project", "team-a", env=env).stdout
    bad = ftaas("keys", "create", "--project", "Not Valid!", env=env, check=False)
    assert bad.returncode != 0


def _start_up(data_dir: Path, port: int, model_cache_dir: Path, *args: str, **env: str
              ) -> tuple[subprocess.Popen, str]:
    """`ftaas up` as a user starts it; its terminal (stdout and stderr) as it reads once the server answers."""
    log = data_dir.parent / f"up-{port}.log"
    with log.open("wb") as terminal:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen([sys.executable, "-m", "ftaas.cli", "up", "--data-dir", str(data_dir), "--port",
                                    str(port), *args], env={**os.environ, "FTAAS_MODEL_CACHE_DIR": str(model_cache_dir), **env},
                                   stdout=terminal, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200:
                return process, log.read_text()
        except httpx.HTTPError:
            time.sleep(0.2)
    stop_process_group(process)
    raise TimeoutError(log.read_text())


def test_up_prints_a_generated_key_once_and_honours_a_bootstrap_key(tmp_path: Path, model_cache_dir: Path) -> None:
    data_dir, port = tmp_path / "data", free_port()
    process, output = _start_up(data_dir, port, model_cache_dir)
    try:
        key = re.search(r"API key +(sk-\S+)", output).group(1)
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {key}"}).json()
        # Both offline base models: the demo model, and the packaged real model (its package is installed).
        assert [m["id"] for m in models["data"]] == ["ftaas-tiny", "smollm2-135m-instruct"]
    finally:
        stop_process_group(process)
    bootstrap = "sk-ftaas-bootstrap-" + "x" * 30
    process, output = _start_up(data_dir, port, model_cache_dir, FTAAS_BOOTSTRAP_API_KEY=bootstrap)
    try:
        assert "store it now" not in output and "sk-" not in output  # the first key is not shown again
        for valid in (key, bootstrap):
            assert httpx.get(f"http://127.0.0.1:{port}/v1/models",
                             headers={"Authorization": f"Bearer {valid}"}).status_code == 200
    finally:
        stop_process_group(process)


def _terminal_after_workers_started(process: subprocess.Popen, terminal: Path, logs: list[Path]) -> str:
    """The terminal once both workers have said they are ready (in their log files, or on the terminal itself)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        text = "".join(p.read_text(errors="replace") for p in [terminal, *logs] if p.is_file())
        if text.count(" ready.") >= 2:  # Celery's "<queue>-<pid>@<host> ready." of each worker
            time.sleep(1)  # anything printed right after it
            return terminal.read_text(errors="replace")
        time.sleep(0.5)
    raise TimeoutError(terminal.read_text(errors="replace"))


def test_up_ends_its_first_minute_with_one_block_the_key_last_and_no_worker_noise(tmp_path: Path,
                                                                                  model_cache_dir: Path) -> None:
    """What a new user sees: once ftaas answers, its terminal ends with one block (the API's address, its docs,
    the one-time key, the base models, where the logs are), and stays so while the workers start: their
    banners and warnings (Celery's SecurityWarning when run as root) go to their log files. --verbose shows
    them on the terminal instead."""
    data_dir, port = tmp_path / "data", free_port()
    process, _ = _start_up(data_dir, port, model_cache_dir)
    try:
        logs = data_dir / "logs"
        output = _terminal_after_workers_started(process, tmp_path / f"up-{port}.log",
                                                 [logs / "worker-default.log", logs / "worker-gpu.log"])
    finally:
        stop_process_group(process)
    block = output[output.index("ftaas is ready"):]
    lines = [line for line in block.splitlines() if line.strip()]
    assert lines[0] == "ftaas is ready" and lines[-1].startswith("  Stop with Ctrl-C")
    assert f"console      http://127.0.0.1:{port}/console" in block
    assert f"API          http://127.0.0.1:{port}/v1" in block and f"http://127.0.0.1:{port}/docs" in block
    assert re.search(r"API key +sk-ftaas-\S{30,}\n +\(project 'default'; shown once: store it now\)", block)
    assert "ftaas-tiny, smollm2-135m-instruct" in block and str(logs) in block
    for noise in ("Warning", "WARNING", "-------------- ", "[tasks]", " ready."):
        assert noise not in output, (noise, output)
    worker_log = (logs / "worker-gpu.log").read_text()
    # the banner, the root warning and the INFO lines: in the file
    assert "-------------- gpu-" in worker_log and " ready." in worker_log and "INFO" in worker_log
    assert (logs / "ftaas.log").is_file()

    port = free_port()
    process, _ = _start_up(data_dir, port, model_cache_dir, "--verbose")
    try:
        output = _terminal_after_workers_started(process, tmp_path / f"up-{port}.log", [])
    finally:
        stop_process_group(process)
    assert "-------------- gpu-" in output and "logs         on this terminal (--verbose)" in output


def test_a_worker_refuses_an_unknown_queue_and_an_evicting_redis(tmp_path: Path) -> None:
    env = {"FTAAS_DATA_DIR": str(tmp_path)}
    ftaas("migrate", env=env)
    unknown = ftaas("worker", "--queues", "cpu", env=env, check=False)
    assert unknown.returncode == 2 and "unknown queue" in unknown.stderr
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is needed for this test (it is installed with the Redis service)")
    port = free_port()
    evicting = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--maxmemory-policy", "allkeys-lru"],
                                stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(0.5)
        refused = ftaas("worker", "--queues", "default", env={**env, "FTAAS_BROKER_URL": f"redis://127.0.0.1:{port}/0"},
                        check=False)
        assert refused.returncode == 2 and "noeviction" in refused.stderr
    finally:
        stop_process_group(evicting)


def test_workers_of_up_do_not_outlive_it_even_when_it_is_killed(tmp_path: Path, model_cache_dir: Path) -> None:
    import psutil

    process, _ = _start_up(tmp_path / "data", free_port(), model_cache_dir)
    up = psutil.Process(process.pid)
    workers = [p for p in up.children() if "worker" in p.cmdline()]
    assert len(workers) == 2
    os.kill(process.pid, 9)  # no chance to clean up
    process.wait()
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert alive == []


def test_an_idle_worker_stops_promptly_on_sigterm(tmp_path: Path) -> None:
    env = {"FTAAS_DATA_DIR": str(tmp_path)}
    ftaas("migrate", env=env)
    worker = subprocess.Popen([sys.executable, "-m", "ftaas.cli", "worker", "--queues", "default"],
                              env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "ready." not in (line := worker.stderr.readline()) and time.monotonic() < deadline:
            assert line or worker.poll() is None, "worker exited early"
        started = time.monotonic()
        os.killpg(worker.pid, 15)
        worker.wait(timeout=30)
        # Measured 6-7 s before the embedded transport's short drains; about 3 s (billiard's pool) after.
        assert time.monotonic() - started < 5
    finally:
        stop_process_group(worker)


def test_the_api_finishes_in_flight_requests_on_sigterm(tmp_path: Path) -> None:
    """Kubernetes sends SIGTERM to a pod it stops: `ftaas api` stops taking connections at once but
    finishes the requests it is serving (here a slow upload) before it exits."""
    import threading

    env = {"FTAAS_DATA_DIR": str(tmp_path)}
    ftaas("migrate", env=env)
    key = ftaas("keys", "create", env=env).stdout.strip()
    port = free_port()
    api = subprocess.Popen([sys.executable, "-m", "ftaas.cli", "api", "--port", str(port)],
                           env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and api.poll() is None, "the API did not start"
            time.sleep(0.2)
        boundary = "ftaas-test-boundary"
        line = (b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
        sent = threading.Event()

        def slow_body():
            yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
                   f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"slow.jsonl\"\r\n"
                   "Content-Type: application/jsonl\r\n\r\n").encode()
            for index in range(12):
                yield line * 10
                if index == 2:
                    sent.set()  # the request is in flight: now the pod is told to stop
                time.sleep(0.25)
            yield f"\r\n--{boundary}--\r\n".encode()

        result: dict = {}

        def upload() -> None:
            result["response"] = httpx.post(f"{base}/v1/files", content=slow_body(), timeout=60, headers={
                "Authorization": f"Bearer {key}", "Content-Type": f"multipart/form-data; boundary={boundary}"})

        uploader = threading.Thread(target=upload)
        uploader.start()
        assert sent.wait(30)
        os.killpg(api.pid, 15)
        uploader.join(60)
        response = result["response"]
        assert response.status_code == 200, response.text
        assert response.json()["bytes"] == len(line) * 120 and response.json()["filename"] == "slow.jsonl"
        # uvicorn re-raises the signal once its graceful shutdown is done (what a supervisor expects to see).
        assert api.wait(timeout=40) in (0, -15)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{base}/health/live", timeout=1)
    finally:
        stop_process_group(api)


def test_a_worker_that_ignores_sigterm_still_dies_soon_after_its_parent(tmp_path: Path) -> None:
    """A worker already in warm shutdown ignores the parent-death SIGTERM (and a warm shutdown can hang on a
    task): the parent watch kills its process group `grace` seconds after the parent is gone."""
    import psutil

    child = tmp_path / "child.py"
    child.write_text(
        "import os, signal, sys, time\n"
        "from ftaas.launcher import exit_with_parent\n"
        "exit_with_parent(int(sys.argv[1]), grace=1.0, poll=0.1)\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as a worker already shutting down\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n")
    middle = subprocess.Popen([sys.executable, "-c", (
        "import os, subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, {str(child)!r}, str(os.getpid())], start_new_session=True,"
        " stdout=subprocess.PIPE, text=True)\n"
        "assert child.stdout.readline().strip() == 'ready'\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n")], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    orphan = psutil.Process(int(middle.stdout.readline()))
    middle.kill()  # the `ftaas up` killed outright
    middle.wait()
    started = time.monotonic()
    gone, alive = psutil.wait_procs([orphan], timeout=20)
    assert alive == [] and time.monotonic() - started < 10
