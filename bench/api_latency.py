"""API latency and job-create throughput, embedded default (SQLite) vs PostgreSQL, side by side.

For each backend it starts `ftaas api --with-relay` (no workers: created jobs wait in validating_files,
so nothing competes with the API for the CPU), creates a project, a file and 200 jobs, then drives it
with 32 concurrent connections from wrk (a C load generator; a Python client saturates first and reports
its own scheduling delays as server latency):

* retrieve: GET /v1/fine_tuning/jobs/{id}, rotating over the 200 jobs (auth + one indexed lookup)
* list:     GET /v1/fine_tuning/jobs?limit=20
* create:   POST /v1/fine_tuning/jobs (auth, checks, job + events + outbox in one transaction)

The baseline is GET /health/live on the same server: the HTTP stack, middleware and routing alone (no
auth, no database), so `retrieve / floor` is what authentication and the database cost.

    python bench/api_latency.py [--seconds 10] [--connections 32] [--postgres-url URL]

Needs `wrk` (Debian/Ubuntu: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.servers import free_port, stop_process_group  # noqa: E402
from tests.factories import training_jsonl  # noqa: E402

ROTATE_PATHS = """
paths = {%s}
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[(counter %% #paths) + 1])
end
"""
POST_JSON = """
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
"""


def start_api(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, int, str]:
    port = free_port()
    env = {**os.environ, **env, "FTAAS_PORT": str(port), "FTAAS_LOG_LEVEL": "WARNING",
           "FTAAS_MAX_ACTIVE_JOBS_PER_PROJECT": "1000000"}
    subprocess.run([sys.executable, "-m", "ftaas.cli", "migrate"], env=env, check=True, capture_output=True)
    key = subprocess.run([sys.executable, "-m", "ftaas.cli", "keys", "create"], env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    process = subprocess.Popen([sys.executable, "-m", "ftaas.cli", "api", "--with-relay"], env=env,
                               stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200:
                return process, port, key
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError(log.read_text())


def wrk(url: str, key: str | None, seconds: int, connections: int, script: str | None, workdir: Path) -> dict:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if key:
        command[1:1] = ["-H", f"Authorization: Bearer {key}"]
    if script:
        path = workdir / f"script-{uuid.uuid4().hex[:6]}.lua"
        path.write_text(script)
        command[1:1] = ["-s", str(path)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout

    def found(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.M)
        if match is None:
            raise RuntimeError(f"wrk printed no {pattern!r}:\n{output}")
        return match

    def percentile(label: str) -> float:
        value, unit = found(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$").groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {"per_second": float(found(r"Requests/sec:\s+([\d.]+)").group(1)),
            "n": int(found(r"(\d+) requests in").group(1)),
            "p50_ms": percentile("50%"), "p90_ms": percentile("90%"), "p99_ms": percentile("99%"),
            "failures": int(errors.group(1)) if errors else 0}


def measure(port: int, key: str, seconds: int, connections: int, workdir: Path) -> dict[str, dict]:
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        file_id = client.post("/v1/files", files={"file": ("b.jsonl", training_jsonl(10))},
                              data={"purpose": "fine-tune"}).json()["id"]
        create = json.dumps({"model": "ftaas-tiny", "training_file": file_id})
        job_ids = [client.post("/v1/fine_tuning/jobs", content=create,
                               headers={"content-type": "application/json"}).json()["id"] for _ in range(200)]
    rotate = ROTATE_PATHS % ", ".join(f'"/v1/fine_tuning/jobs/{job}"' for job in job_ids)
    wrk(f"{base}/health/live", None, 2, connections, None, workdir)  # warm-up
    return {
        "floor (GET /health/live)": wrk(f"{base}/health/live", None, seconds, connections, None, workdir),
        "retrieve job": wrk(base, key, seconds, connections, rotate, workdir),
        "list jobs (limit 20)": wrk(f"{base}/v1/fine_tuning/jobs?limit=20", key, seconds, connections, None, workdir),
        "create job": wrk(f"{base}/v1/fine_tuning/jobs", key, seconds, connections, POST_JSON % create, workdir),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("this benchmark needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2

    admin = create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
    database = f"ftaas_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{database}"'))
    all_results: dict[str, dict] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            backends = {
                "sqlite (embedded default)": {"FTAAS_DATA_DIR": f"{tmp}/embedded"},
                "postgresql": {"FTAAS_DATA_DIR": f"{tmp}/pg",
                               "FTAAS_DATABASE_URL": args.postgres_url.rsplit("/", 1)[0] + "/" + database},
            }
            for name, env in backends.items():
                process, port, key = start_api(env, Path(tmp) / f"{name.split()[0]}.log")
                try:
                    all_results[name] = measure(port, key, args.seconds, args.connections, Path(tmp))
                finally:
                    stop_process_group(process)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()

    print(f"\n{args.connections} concurrent connections (wrk, closed loop), one uvicorn process, "
          f"{os.cpu_count()} CPU cores shared with the load generator\n")
    print(f"{'backend':<27} {'scenario':<26} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    for backend, results in all_results.items():
        for scenario, r in results.items():
            print(f"{backend:<27} {scenario:<26} {r['n']:>8} {r['per_second']:>8.0f} {r['p50_ms']:>8.1f} "
                  f"{r['p90_ms']:>8.1f} {r['p99_ms']:>8.1f}" + (f"  NON-2xx: {r['failures']}" if r["failures"] else ""))
    print()
    for backend, results in all_results.items():
        floor, retrieve = results["floor (GET /health/live)"], results["retrieve job"]
        print(f"{backend}: retrieve throughput = {retrieve['per_second'] / floor['per_second']:.2f}x the floor; "
              f"retrieve p99 {retrieve['p99_ms']:.1f} ms (goal < 25 ms: {'met' if retrieve['p99_ms'] < 25 else 'NOT met'})")
    sqlite, pg = all_results["sqlite (embedded default)"], all_results["postgresql"]
    print(f"postgresql / sqlite: retrieve {pg['retrieve job']['per_second'] / sqlite['retrieve job']['per_second']:.2f}x, "
          f"create {pg['create job']['per_second'] / sqlite['create job']['per_second']:.2f}x (throughput)")
    out = ROOT / ".bench-out"
    out.mkdir(exist_ok=True)
    (out / "api_latency.json").write_text(json.dumps(all_results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
