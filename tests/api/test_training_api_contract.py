"""The training API's contract where requests arrive (no worker holds the models here): keys as the tinker SDK
sends them, bad requests refused with a 400 naming the field before anything is queued, the per-project limit on
live training models, futures that say "try again" while pending, projects kept apart, and a model whose worker
was lost reported to its client instead of started over with a fresh adapter."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tinker import types
from tinker.proto.request_conv import forward_backward_request_to_proto

from contracts.settings import DEMO_BASE_MODEL, Settings
from db import projects
from db import training_api as rows
from db.tables import TrainingModel, TrainingRequest
from tests.api.conftest import live_app
from worker.app import create_celery_app
from worker.maintenance import Maintenance


class Training:
    def __init__(self, client: TestClient, key: str, other: str, services: Any, settings: Settings) -> None:
        self.client, self.key, self.other, self.services, self.settings = client, key, other, services, settings

    def post(self, path: str, body: Any = None, *, key: str | None = None, raw: bytes | None = None) -> Any:
        headers = {"X-API-Key": f"tml-{key or self.key}"}
        if raw is not None:
            return self.client.post(f"/api/v1/{path}", content=raw, headers={
                **headers, "Content-Type": "application/x-protobuf"})
        return self.client.post(f"/api/v1/{path}", json=body or {}, headers=headers)


@pytest.fixture
def training(tmp_path: Path, model_cache_dir: Path) -> Iterator[Training]:
    settings = Settings(data_dir=tmp_path, model_cache_dir=model_cache_dir, training_api_poll_seconds=0.3,
                        training_api_max_live_models_per_project=2)
    with live_app(settings) as (client, key, other):
        yield Training(client, key, other, client.app.state.services, settings)


def fb_body(model_id: str, seq_id: int, loss_fn: str = "cross_entropy", inputs: dict | None = None) -> bytes:
    datum = types.Datum(model_input=types.ModelInput.from_ints([1, 2, 3]), loss_fn_inputs=inputs if inputs is not None
                        else {"target_tokens": [2, 3, 4], "weights": [0.0, 1.0, 1.0]})
    request = types.ForwardBackwardRequest(forward_backward_input=types.ForwardBackwardInput(data=[datum], loss_fn=loss_fn),
                                           model_id=model_id, seq_id=seq_id)
    return forward_backward_request_to_proto(request).SerializeToString()


def a_model(training: Training, seq: int = 0) -> tuple[str, str]:
    session_id = training.post("create_session", {"tags": []}).json()["session_id"]
    created = training.post("create_model", {"session_id": session_id, "model_seq_id": seq, "base_model": DEMO_BASE_MODEL,
                                             "lora_config": {"rank": 8}})
    assert created.status_code == 200, created.text
    return session_id, created.json()["model_id"]


def test_keys_are_accepted_as_the_sdk_sends_them_and_nothing_else(training: Training) -> None:
    assert training.post("client/config").status_code == 200  # X-API-Key: tml-<key>
    bearer = training.client.post("/api/v1/client/config", headers={"Authorization": f"Bearer tml-{training.key}"})
    assert bearer.status_code == 200
    assert training.client.post("/api/v1/client/config").json()["error"]["code"] == "missing_api_key"
    assert training.post("client/config", key="sk-ftaas-wrong").status_code == 401


def test_bad_requests_are_refused_by_name_before_anything_is_queued(training: Training) -> None:
    session_id = training.post("create_session").json()["session_id"]
    cases = [("create_model", {"session_id": session_id, "base_model": "gpt-4o"}, "base_model"),
             ("create_model", {"session_id": session_id, "base_model": DEMO_BASE_MODEL, "lora_config": {"rank": 0}},
              "lora_config.rank"),
             ("create_model", {"session_id": session_id, "base_model": DEMO_BASE_MODEL, "lora_config": {
                 "train_mlp": False, "train_attn": False, "train_unembed": False}}, "lora_config"),
             ("create_model", {"session_id": "tsess_nope", "base_model": DEMO_BASE_MODEL}, "session_id"),
             # what ftaas would not keep is refused, not dropped
             ("create_model", {"session_id": session_id, "base_model": DEMO_BASE_MODEL,
                               "user_metadata": {"run": "a"}}, "user_metadata"),
             ("create_model", {"session_id": session_id, "base_model": DEMO_BASE_MODEL,
                               "optimizer_config": {"type": "sgd"}}, "optimizer_config"),
             ("create_model", {"session_id": session_id, "base_model": DEMO_BASE_MODEL,
                               "lora_config": {"rank": 8, "alpha": 16}}, "lora_config.alpha"),
             ("create_session", {"display_name": "mine"}, "display_name")]
    for path, body, param in cases:
        refused = training.post(path, body)
        assert refused.status_code in (400, 404) and refused.json()["error"]["param"] == param, refused.text
    _, model_id = a_model(training)
    for body, param in [(fb_body(model_id, 1, "gspo"), "loss_fn"),
                        (fb_body(model_id, 1, "ppo"), "data.0.loss_fn_inputs.logprobs"),
                        (fb_body(model_id, 1, inputs={"target_tokens": [1, 2]}), "data.0.loss_fn_inputs.target_tokens"),
                        (fb_body(model_id, 0), "seq_id"), (b"\x01\x02garbage", "body")]:
        refused = training.post("forward_backward", raw=body)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param, refused.text
    bad_adam = training.post("optim_step", {"model_id": model_id, "seq_id": 1, "adam_params": {"beta1": 1.5}})
    assert bad_adam.status_code == 400
    with training.services.db.read() as session:
        assert [r.kind for r in session.query(TrainingRequest).all()] == ["create_model"]  # nothing else queued


def test_live_models_are_limited_per_project_and_futures_wait_then_say_try_again(training: Training) -> None:
    first = a_model(training)
    a_model(training)
    third = training.post("create_model", {"session_id": first[0], "model_seq_id": 5, "base_model": DEMO_BASE_MODEL})
    assert third.status_code == 429 and third.json()["error"]["code"] == "too_many_training_models"
    submitted = training.post("forward_backward", raw=fb_body(first[1], 1)).json()
    again = training.post("forward_backward", raw=fb_body(first[1], 1)).json()
    assert again == submitted  # the SDK's retry of a seq_id is the same request
    started = time.monotonic()
    polled = training.post("retrieve_future", {"request_id": submitted["request_id"]}).json()
    assert polled["type"] == "try_again" and time.monotonic() - started >= 0.25  # held open, then try again
    foreign = training.post("retrieve_future", {"request_id": submitted["request_id"]}, key=training.other)
    assert foreign.status_code == 404
    assert training.post("get_info", {"model_id": first[1]}, key=training.other).status_code == 404
    assert training.post("forward_backward", raw=fb_body(first[1], 2), key=training.other).status_code == 404


def test_a_model_whose_worker_was_lost_is_failed_and_its_client_told_to_load_its_state(training: Training) -> None:
    _, model_id = a_model(training)
    pending = training.post("forward_backward", raw=fb_body(model_id, 1)).json()
    with training.services.db.write() as session:  # a worker took it, then stopped renewing its lease
        assert rows.MODELS.claim(session, model_id, owner="gone:1", ttl=0.01) is not None
    time.sleep(0.05)
    settings = training.settings
    Maintenance(training.services.db, training.services.store, create_celery_app(settings, with_tasks=False),
                settings).reap_once()
    with training.services.db.read() as session:
        assert session.get(TrainingModel, model_id).status == "failed"
    answer = training.post("retrieve_future", {"request_id": pending["request_id"]}).json()
    assert answer["category"] == "server" and "load_state" in answer["error"]  # not started over elsewhere
    refused = training.post("forward_backward", raw=fb_body(model_id, 2))
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "training_model_released"


def test_a_sample_whose_process_was_lost_is_reported_instead_of_pending_forever(training: Training) -> None:
    from api.training_api.service import SAMPLE_DEADLINE_SECONDS

    with training.services.db.write() as session:
        project_id = projects.ensure_project(session, "alpha").id
        lost = rows.add_request(session, project_id=project_id, kind="sample", payload=b"{}")
        fresh = rows.add_request(session, project_id=project_id, kind="sample", payload=b"{}")
        lost.created_at = time.time() - SAMPLE_DEADLINE_SECONDS - 1
    answer = training.post("retrieve_future", {"request_id": lost.id}).json()
    assert answer["category"] == "server" and "sample again" in answer["error"]
    assert training.post("retrieve_future", {"request_id": fresh.id}).json()["type"] == "try_again"


def test_listings_saves_and_cancels_refuse_what_they_cannot_do_by_name(training: Training) -> None:
    session_id, model_id = a_model(training)
    headers = {"X-API-Key": f"tml-{training.key}"}
    runs = training.client.get("/api/v1/training_runs", headers=headers).json()
    assert [r["training_run_id"] for r in runs["training_runs"]] == [model_id]
    assert runs["cursor"] == {"offset": 0, "limit": 20, "total_count": 1}
    assert runs["training_runs"][0]["last_checkpoint"] is None and not runs["training_runs"][0]["corrupted"]
    for query, param in [("limit=0", "limit"), ("limit=101", "limit"), ("offset=-1", "offset"),
                         ("project_id=other", "project_id")]:
        refused = training.client.get(f"/api/v1/training_runs?{query}", headers=headers)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param, refused.text
    assert training.client.get(f"/api/v1/training_runs/{model_id}/checkpoints", headers=headers).json() == {
        "checkpoints": []}
    assert training.client.get("/api/v1/sessions", headers=headers).json() == {"sessions": [session_id]}
    assert training.client.get(f"/api/v1/sessions/{session_id}", headers=headers).json() == {
        "training_run_ids": [model_id], "sampler_ids": [], "user_metadata": None}
    missing = training.client.delete(f"/api/v1/training_runs/{model_id}/checkpoints/weights/none", headers=headers)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "checkpoint_not_found"
    assert training.post("weights_info", {"tinker_path": f"tinker://{model_id}/weights/none"}).status_code == 404
    for body, param in [({"model_id": model_id, "seq_id": 1}, "sampling_session_seq_id"),  # neither name nor sampler
                        ({"model_id": model_id, "seq_id": 1, "sampling_session_seq_id": 0, "kind": "inflight"}, "kind"),
                        ({"model_id": model_id, "seq_id": 1, "path": "a", "ttl_seconds": 60}, "ttl_seconds")]:
        refused = training.post("save_weights_for_sampler", body)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param, refused.text
    # A training request is not cancelled (its model runs requests in order); an unknown future is a 404.
    pending = training.post("forward_backward", raw=fb_body(model_id, 1)).json()
    refused = training.post("cancel_future", {"request_id": pending["request_id"]})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "unsupported"
    assert training.post("cancel_future", {"request_id": "treq_nope"}).status_code == 404
    # A sample's future, cancelled, answers so (an error the SDK reports to whoever still waits on it).
    with training.services.db.write() as session:
        sample = rows.add_request(session, project_id=projects.ensure_project(session, "alpha").id, kind="sample",
                                  payload=b"{}")
    assert training.post("cancel_future", {"request_id": sample.id}, key=training.other).status_code == 404
    assert training.post("cancel_future", {"request_id": sample.id}).status_code == 200
    answer = training.post("retrieve_future", {"request_id": sample.id}).json()
    assert answer == {"error": "cancelled by the client", "category": "user"}
    assert training.post("client/dynamic_config").json()["sample_cancel_enabled"] is True
    training.post(f"sessions/{session_id}/finish")


#: Fields the SDK's JSON bodies carry, and values of every wrong kind (the fuzzing below).
FIELDS = ["session_id", "model_id", "seq_id", "model_seq_id", "base_model", "lora_config", "optimizer_config",
          "adam_params", "path", "kind", "sampling_session_seq_id", "sampling_session_id", "model_path", "prompt",
          "sampling_params", "num_samples", "request_id", "tinker_path", "tags", "user_metadata", "optimizer",
          "overwrite", "prompt_logprobs", "prompt_logprobs_last_n", "ttl_seconds", "display_name", "project_id"]
ODD_VALUES = [None, -1, 0, 10**30, 1.5, True, "", "x" * 300, "tinker://a/b/c", [], [1, "a"], {}, {"rank": "x"},
              {"chunks": [{"type": "encoded_text", "tokens": ["a"]}]}, {"stop": [1.5], "max_tokens": -3}]


def test_no_body_of_any_shape_makes_a_server_error(training: Training) -> None:
    """Every route of the training API, every field the SDK sends, values of every wrong kind (and bodies that
    are not objects): a 4xx in the error shape, never a 5xx. Seeded: the same 1,500 requests each run."""
    import random

    session_id, model_id = a_model(training)
    training.post("create_sampling_session", {"session_id": session_id, "sampling_session_seq_id": 0,
                                              "base_model": DEMO_BASE_MODEL})
    from api.training_api.router import router

    routes = [r.path.removeprefix("/api/v1/") for r in router.routes if "POST" in getattr(r, "methods", ())
              and "{" not in r.path and r.path not in ("/api/v1/forward_backward", "/api/v1/telemetry")]
    assert len(routes) >= 15, routes
    rng = random.Random(32)
    valid = {"session_id": session_id, "model_id": model_id, "seq_id": 1, "base_model": DEMO_BASE_MODEL}
    answers = []
    for _ in range(1500):
        route = rng.choice(routes)
        body: Any = dict(valid) if rng.random() < 0.5 else {}
        for field in rng.sample(FIELDS, rng.randint(1, 4)):
            body[field] = rng.choice(ODD_VALUES)
        if rng.random() < 0.05:
            body = rng.choice([[], "x", 3, None])
        answer = training.post(route, body)
        answers.append(answer.status_code)
        assert answer.status_code < 500, (route, body, answer.text)
        if answer.status_code >= 400:
            assert answer.json()["error"]["message"], (route, body, answer.text)
    for query in ("limit=abc", "offset=x", "limit=1e9", "limit=-5"):
        for listing in ("training_runs", "checkpoints", "sessions"):
            answer = training.client.get(f"/api/v1/{listing}?{query}", headers={"X-API-Key": f"tml-{training.key}"})
            assert 400 <= answer.status_code < 500 and answer.json()["error"]["message"], (listing, query, answer.text)
    assert sum(400 <= s < 500 for s in answers) > 1000  # mostly refused, as such bodies should be


def test_no_forward_backward_body_makes_a_server_error(training: Training) -> None:
    """The protobuf route: valid requests cut short, with bytes flipped, or holding odd inputs (every loss, shapes
    and token ids that do not fit): 4xx or a queued request, never a 5xx. Seeded."""
    import random

    _, model_id = a_model(training)
    rng = random.Random(7)
    inputs = [{"target_tokens": [2, 3, 4]}, {"target_tokens": [2, 3, 4], "weights": [1.0, 1.0]},
              {"target_tokens": [-1, 3, 2**31 - 1], "weights": [float("nan"), 1.0, 1.0]},
              {"target_tokens": [2, 3, 4], "logprobs": [0.0, 0.0, 0.0], "advantages": [1.0, -1.0, 0.5]},
              {"target_tokens": [[2, 3, 4]], "advantages": [1.0, 2.0, 3.0], "logprobs": [1.0, 1.0, 1.0]}, {}]
    seq, statuses = 1, []
    for _ in range(300):
        loss = rng.choice(["cross_entropy", "importance_sampling", "ppo", "cispo", "dro", "", "x" * 200])
        try:
            body = fb_body(model_id, rng.choice([seq, 0, -3, 2**31 - 1]), loss, rng.choice(inputs))
        except (ValueError, TypeError):  # the SDK itself refuses to build it
            continue
        if rng.random() < 0.5:
            cut = rng.randrange(len(body))
            body = body[:cut] + bytes([rng.randrange(256)]) + body[cut + 1:] if rng.random() < 0.5 else body[:cut]
        answer = training.post("forward_backward", raw=body)
        assert answer.status_code < 500, (loss, body, answer.text)
        statuses.append(answer.status_code)
        if answer.status_code == 200:
            seq += 1
    assert statuses.count(200) >= 10 and statuses.count(400) >= 100, statuses  # both kinds were exercised
