"""`ftaas serve` as the cluster's serving process: PostgreSQL + S3, a model trained by the cluster, and a
graceful drain on SIGTERM (readiness false first, running completions finish, new ones refused)."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import threading
import time

import httpx

from tests.e2e.servers import LiveServer, free_port, upload_processed, wait_for
from tests.factories import training_jsonl


def test_ftaas_serve_serves_cluster_models_and_drains_on_sigterm(cluster: LiveServer) -> None:
    client = cluster.client()
    file = upload_processed(client, "serve.jsonl", training_jsonl(10))
    job = client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=file.id, suffix="served", method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 5}}})
    job = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
                   what="the job to serve")
    assert job.status == "succeeded", job.error
    checkpoint = client.fine_tuning.jobs.checkpoints.list(job.id).data[0].fine_tuned_model_checkpoint

    port = free_port()
    serving = dataclasses.replace(cluster, kind="serve", port=port, processes=[],
                                  log_path=cluster.log_path.with_name("serve.log"),
                                  env={**cluster.env, "FTAAS_SERVING_DRAIN_SECONDS": "60"})
    process = serving.spawn("serve", "--port", str(port))
    try:
        serving.wait_ready()
        served = serving.client(max_retries=0)
        for model in (job.fine_tuned_model, checkpoint, "ftaas-tiny"):
            reply = served.chat.completions.create(model=model, temperature=0, max_tokens=6,
                                                   messages=[{"role": "user", "content": "What is the access code?"}])
            assert reply.usage.completion_tokens > 0 and reply.model == model
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        # The adapters loaded from the store (the model, its checkpoint) are counted without naming either:
        # the endpoint needs no key, and model names are tenant data.
        loads = re.search(r'^ftaas_serving_adapter_loads_total\{source="store"\} (\S+)$', metrics, re.M)
        assert loads and float(loads.group(1)) >= 1, metrics
        assert job.fine_tuned_model not in metrics and "ft:" not in metrics

        # A long completion is running when SIGTERM arrives.
        body = {"model": job.fine_tuned_model, "temperature": 0, "max_tokens": 950, "stream": True,
                "messages": [{"role": "user", "content": "Tell me everything."}]}
        finish: list[str | None] = []
        first_chunk = threading.Event()

        def stream() -> None:
            with serving.http() as http, http.stream("POST", "/chat/completions", json=body) as response:
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        first_chunk.set()
                        choices = json.loads(line[6:])["choices"]
                        if choices and choices[0]["finish_reason"]:
                            finish.append(choices[0]["finish_reason"])

        reader = threading.Thread(target=stream)
        reader.start()
        assert first_chunk.wait(30)
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=5).status_code != 503:
            assert time.monotonic() < deadline, "readiness did not turn false on SIGTERM"
            time.sleep(0.05)
        refused = httpx.post(serving.base_url + "/chat/completions", json=body | {"stream": False},
                             headers={"Authorization": f"Bearer {cluster.api_key}"}, timeout=10)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_draining"
        reader.join(timeout=120)
        assert finish == ["length"], "the running completion must finish during the drain"
        # uvicorn re-raises the signal it captured once shutdown is complete: the process ends by SIGTERM.
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
        assert "drain complete" in serving.log_tail(40)
    finally:
        serving.stop()
