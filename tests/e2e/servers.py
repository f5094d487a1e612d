"""Live ftaas deployments for end-to-end tests: real processes, real ports, the official SDK as client.

* `embedded`: `ftaas up` (uvicorn + Celery worker processes + relay/reaper + serving), SQLite, the
  serverless broker and a local artifact directory: exactly what a user's laptop runs.
* `cluster`: `ftaas migrate`, `ftaas api --with-relay`, and `ftaas worker` processes per queue, on
  PostgreSQL, Redis and an S3-compatible HTTP server: the Helm topology on one machine.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from openai import OpenAI

from contracts.settings import Settings
from db.session import Database
from storage import ArtifactStore, open_store

ROOT = Path(__file__).resolve().parents[2]

#: Short leases and a fast reaper make worker-loss tests take seconds, not minutes; retries at most 4 s apart
#: let work go on within seconds of an outage's end (at the default 30 s cap a 12 s outage cost 22-44 s).
FAST_RECOVERY = {
    "FTAAS_OUTAGE_MAX_RETRY_DELAY_SECONDS": "4",
    "FTAAS_LEASE_TTL_SECONDS": "4",
    "FTAAS_MAINTENANCE_INTERVAL_SECONDS": "0.5",
    "FTAAS_RELAY_POLL_SECONDS": "0.1",
    "FTAAS_REDISPATCH_AFTER_SECONDS": "30",
    "FTAAS_MAX_ACTIVE_JOBS_PER_PROJECT": "50",
    "FTAAS_LOG_LEVEL": "INFO",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    kind: str
    port: int
    api_key: str
    env: dict[str, str]
    log_path: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def client(self, key: str | None = None, **options: Any) -> OpenAI:
        return OpenAI(base_url=self.base_url, api_key=key or self.api_key, **options)

    def http(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {key or self.api_key}"},
                            timeout=60)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ftaas.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=120, check=True)

    def create_key(self, project: str) -> str:
        return self.cli("keys", "create", "--project", project).stdout.strip()

    def settings(self) -> Settings:
        """The server's configuration, parsed from the environment it was started with."""
        return Settings(**{k[len("FTAAS_"):].lower(): v for k, v in self.env.items() if k.startswith("FTAAS_")})

    def gpu_worker(self) -> psutil.Process:
        """The GPU-queue worker process that `ftaas up` started (and restarts when it dies)."""
        up = psutil.Process(self.processes[0].pid)
        return next(p for p in up.children() if "gpu" in p.cmdline() and "worker" in p.cmdline())

    def database(self) -> Database:
        return Database(self.env["FTAAS_DATABASE_URL"], pool_size=1)

    def store(self) -> ArtifactStore:
        settings = self.settings()
        assert settings.storage.artifact_uri is not None
        return open_store(settings.storage.artifact_uri, settings.storage)

    def spawn(self, *args: str) -> subprocess.Popen:
        log = open(self.log_path, "ab")  # noqa: SIM115 (owned by the process)
        process = subprocess.Popen([sys.executable, "-m", "ftaas.cli", *args], env=self.env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
        self.processes.append(process)
        return process

    def adapter_of(self, model_name: str) -> dict[str, Any]:
        """The published adapter tensors of a fine-tuned model, read (verified) from the store."""
        import json as json_module

        from safetensors.torch import load

        from db.tables import Model

        database = self.database()
        try:
            with database.read() as session:
                row = session.get(Model, model_name)
                prefix, manifest_sha256 = row.storage_prefix, row.manifest_sha256
        finally:
            database.dispose()
        store = self.store()
        manifest = json_module.loads(store.get_bytes(prefix + "manifest.json", sha256=manifest_sha256))
        entry = manifest["files"]["adapter_model.safetensors"]
        return load(store.get_bytes(prefix + "adapter_model.safetensors", sha256=entry["sha256"]))

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{self.kind} process exited with {process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.kind} server not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop every process and check that nothing they started outlives them (a leak is an error)."""
        descendants = []
        for process in self.processes:
            try:
                descendants += psutil.Process(process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        for process in reversed(self.processes):
            stop_process_group(process)
        _, alive = psutil.wait_procs(descendants, timeout=20)
        for leftover in alive:
            leftover.kill()
        if alive:
            raise RuntimeError(f"{self.kind} deployment left processes behind: {[p.pid for p in alive]}")


def stop_process_group(process: subprocess.Popen, grace: float = 15) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def start_embedded(data_dir: Path, model_cache_dir: Path, **extra_env: str) -> LiveServer:
    port = free_port()
    key = "sk-ftaas-test-" + secrets.token_urlsafe(24)
    env = {**os.environ, **FAST_RECOVERY, "FTAAS_DATA_DIR": str(data_dir), "FTAAS_MODEL_CACHE_DIR": str(model_cache_dir),
           "FTAAS_BOOTSTRAP_API_KEY": key, "FTAAS_DATABASE_URL": f"sqlite:///{data_dir / 'ftaas.db'}", **extra_env}
    server = LiveServer("embedded", port, key, env, data_dir.parent / f"{data_dir.name}.log")
    server.spawn("up", "--port", str(port), "--data-dir", str(data_dir), "--verbose")  # every log in one file
    server.wait_ready()
    return server


def start_cluster(work_dir: Path, model_cache_dir: Path, *, database_url: str, redis_url: str, s3_endpoint: str,
                  bucket: str, s3_credentials: dict[str, str], gpu_workers: int = 1, **extra_env: str) -> LiveServer:
    port = free_port()
    env = {**os.environ, **FAST_RECOVERY, "FTAAS_DATA_DIR": str(work_dir), "FTAAS_MODEL_CACHE_DIR": str(model_cache_dir),
           "FTAAS_DATABASE_URL": database_url, "FTAAS_BROKER_URL": redis_url,
           "FTAAS_ARTIFACT_URI": f"s3://{bucket}/ftaas", "FTAAS_S3_ENDPOINT_URL": s3_endpoint,
           "FTAAS_S3_ACCESS_KEY_ID": s3_credentials["aws_access_key_id"],
           "FTAAS_S3_SECRET_ACCESS_KEY": s3_credentials["aws_secret_access_key"], "FTAAS_PORT": str(port), **extra_env}
    server = LiveServer("cluster", port, "", env, work_dir / "cluster.log")
    subprocess.run([sys.executable, "-m", "ftaas.cli", "migrate"], env=env, check=True, capture_output=True, timeout=120)
    server.api_key = server.create_key("default")
    server.spawn("api", "--with-relay")
    server.spawn("worker", "--queues", "default")
    for _ in range(gpu_workers):
        server.spawn("worker", "--queues", "gpu")
    server.wait_ready()
    return server


def upload_processed(client: OpenAI, name: str, data: bytes) -> Any:
    """Upload a fine-tune file and wait until its validation finished."""
    file = client.files.create(file=(name, data), purpose="fine-tune")
    return client.files.wait_for_processing(file.id, poll_interval=0.2, max_wait_seconds=120)


def wait_for(predicate: Callable[[], Any], *, timeout: float = 120, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
