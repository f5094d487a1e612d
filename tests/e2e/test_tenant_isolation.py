"""Another project's key gets 404 for every object route, changes nothing, and never sees foreign ids."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.e2e.servers import LiveServer

pytestmark = pytest.mark.slow


def test_project_b_cannot_reach_anything_of_project_a(embedded: LiveServer, finished_job) -> None:
    owner = embedded.client()
    job = finished_job
    checkpoint = next(iter(owner.fine_tuning.jobs.checkpoints.list(job.id))).fine_tuned_model_checkpoint
    stranger_key = embedded.create_key("intruders")
    with embedded.http() as owner_http:
        evaluation = owner_http.post("/knowledge_evals", json={"model": job.fine_tuned_model,
                                                               "suites": ["fictional_people?size=1"]}).json()
        owner_http.post(f"/knowledge_evals/{evaluation['id']}/cancel")  # an id is all this test needs
        operation = owner_http.post("/adapter_operations", json={"type": "compress", "model": job.fine_tuned_model}).json()
        owner_http.post(f"/adapter_operations/{operation['id']}/cancel")
        webhook = owner_http.post("/webhooks", json={"url": "http://127.0.0.1:9/hooks"}).json()
    origin = f"http://127.0.0.1:{embedded.port}"
    with httpx.Client(base_url=f"{origin}/api/v1", headers={"X-API-Key": f"tml-{embedded.api_key}"}) as training:
        session_id = training.post("/create_session", json={}).json()["session_id"]  # the training API's objects
        sampler_id = training.post("/create_sampling_session", json={
            "session_id": session_id, "sampling_session_seq_id": 0, "base_model": "ftaas-tiny"}).json()[
            "sampling_session_id"]
        run_id = training.post("/create_model", json={"session_id": session_id, "model_seq_id": 0,
                                                      "base_model": "ftaas-tiny", "lora_config": {"rank": 4}}).json()[
            "model_id"]
        training.post(f"/sessions/{session_id}/finish", json={})  # the worker lets the model go at once
    stored = owner.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=4, store=True, metadata={"owner": "a"})
    ids_of_a = {
        "completion_id": [stored.id],
        "webhook_id": [webhook["id"]],
        "knowledge_eval_id": [evaluation["id"]],
        "operation_id": [operation["id"]],
        "file_id": [job.training_file, job.result_files[0]],
        "fine_tuning_job_id": [job.id],
        "model": [job.fine_tuned_model, checkpoint],
        "session_id": [session_id],
        "sampler_id": [sampler_id],
        "run_id": [run_id],
        "checkpoint_id": ["weights/any"],
    }

    paths = httpx.get(f"http://127.0.0.1:{embedded.port}/openapi.json").json()["paths"]
    #: a valid body where a route needs one (the 404 must come from the id, not from a bad body)
    bodies = {"/v1/chat/completions/{completion_id}": {"metadata": {"owner": "b"}}}
    tested = set()
    with embedded.http(stranger_key) as stranger:
        for path, operations in paths.items():
            params = re.findall(r"{(\w+)(?::path)?}", path)
            if not params:
                continue
            assert all(p in ids_of_a for p in params), f"no tenant test for {path}; add its ids"
            # each id of the route's first parameter, the others' first ids beside it
            filled = [re.sub(r"{(\w+)(?::path)?}", lambda m, v=value, first=params[0]: v if m.group(1) == first
                             else ids_of_a[m.group(1)][0], path) for value in ids_of_a[params[0]]]
            for method in operations:
                for url in filled:
                    body = bodies.get(path, {}) if method == "post" else None
                    if path.startswith("/api/v1/"):  # the training API: its own prefix, keys as the tinker SDK sends
                        response = httpx.request(method.upper(), origin + url, json=body,
                                                 headers={"X-API-Key": f"tml-{stranger_key}"})
                    else:
                        url = url.replace("/v1", "", 1)
                        response = stranger.request(method.upper(), url, json=body)
                    assert response.status_code == 404, (method, url, response.text)
                    assert response.json()["error"]["code"].endswith("not_found"), response.text
                    tested.add((method, path))
        # Inference by name and using A's file in a job of B's are refused too.
        chat = stranger.post("/chat/completions", json={"model": job.fine_tuned_model,
                                                        "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 404 and chat.json()["error"]["code"] == "model_not_found"
        create = stranger.post("/fine_tuning/jobs", json={"model": "ftaas-tiny", "training_file": job.training_file})
        assert create.status_code == 400 and create.json()["error"]["code"] == "file_not_found"
        # Lists show none of A's ids.
        listed = " ".join(stranger.get(p).text for p in ("/files", "/fine_tuning/jobs", "/models", "/knowledge_evals",
                                                               "/adapter_operations", "/webhooks", "/chat/completions",
                                                               "/chat/completions?metadata[owner]=a"))
        for listing in ("training_runs", "checkpoints", "sessions"):
            page = httpx.get(f"{origin}/api/v1/{listing}", headers={"X-API-Key": f"tml-{stranger_key}"}).json()
            assert page[listing] == [] and page.get("cursor", {"total_count": 0})["total_count"] == 0, page
        for value in [v for values in ids_of_a.values() for v in values]:
            assert value not in listed

    every_object_operation = {(m, p) for p, ops in paths.items() if "{" in p for m in ops}
    # jobs, files, models; evals; adapter ops; webhooks; stored completions; training sessions and samplers;
    # training runs and their checkpoints
    assert tested == every_object_operation and len(tested) == 11 + 8 + 2 + 3 + 4 + 3 + 7
    # Nothing of A's changed.
    after = owner.fine_tuning.jobs.retrieve(job.id)
    assert (after.status, after.fine_tuned_model) == ("succeeded", job.fine_tuned_model)
    assert owner.files.retrieve(job.training_file).id == job.training_file
    assert owner.models.retrieve(job.fine_tuned_model).id == job.fine_tuned_model
    with embedded.http() as owner_http:
        assert owner_http.get(f"/webhooks/{webhook['id']}").json()["url"] == "http://127.0.0.1:9/hooks"
    assert owner.chat.completions.retrieve(stored.id).metadata == {"owner": "a"}


def test_the_keyless_metrics_endpoint_names_no_tenant(embedded: LiveServer, finished_job) -> None:
    """`/metrics` needs no key (Prometheus scrapes it), so it carries no project's data: after the owner's
    fine-tuned model and its checkpoint answered, the series name base models, tiers and reasons only."""
    owner = embedded.client()
    checkpoint = next(iter(owner.fine_tuning.jobs.checkpoints.list(finished_job.id))).fine_tuned_model_checkpoint
    for model in (finished_job.fine_tuned_model, checkpoint):
        owner.chat.completions.create(model=model, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    metrics = httpx.get(f"http://127.0.0.1:{embedded.port}/metrics").text
    assert "ftaas_serving_sequences_total" in metrics and "ftaas_serving_adapter_loads_total" in metrics
    assert "ft:" not in metrics and ":owned:" not in metrics, metrics
    labels = set(re.findall(r"[{,](\w+)=", metrics))
    # (kind, state: the machine's thread plan, `serving`/`batch` x `alone`/`shared`)
    assert labels <= {"base_model", "tier", "source", "reason", "finish_reason", "le", "quantile", "kind",
                      "state"}, labels
