"""The HTTP contract every route keeps: the OpenAI error envelope, request ids, auth, limits, paging."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from db.tables import ApiKey
from tests.api.conftest import MAX_UPLOAD, Api
from tests.factories import chat_line
from worker.context import WorkerContext
from worker.files.service import validate_file

TRAINING = ("\n".join(chat_line(f"Question {i}?", f"Answer {i}.") for i in range(12)) + "\n").encode()


def upload(api: Api, data: bytes = TRAINING, *, name: str = "train.jsonl", purpose: str = "fine-tune",
           key: str | None = None):
    return api.client.post("/v1/files", files={"file": (name, data)}, data={"purpose": purpose}, headers=api.headers(key))


def processed_file(api: Api, data: bytes = TRAINING) -> str:
    """Upload, then run the real validation service (what the default-queue worker would do)."""
    file_id = upload(api, data).json()["id"]
    validate_file(WorkerContext(api.settings), file_id)
    return file_id


def assert_error(response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    if param is not None:
        assert body["error"]["param"] == param
    assert response.headers["x-request-id"].startswith("req_")
    return body["error"]


# ------------------------------------------------------------------------------ request ids and auth
def test_every_response_carries_a_request_id(api: Api) -> None:
    responses = [
        api.client.get("/health/live"),
        api.client.get("/v1/models", headers=api.headers()),
        api.client.get("/v1/models"),
        api.client.get("/v1/nowhere", headers=api.headers()),
        api.client.post("/v1/fine_tuning/jobs", content=b"{", headers={**api.headers(), "content-type": "application/json"}),
    ]
    ids = [r.headers["x-request-id"] for r in responses]
    assert all(i.startswith("req_") for i in ids) and len(set(ids)) == len(ids)


@pytest.mark.parametrize("authorization, code", [(None, "missing_api_key"), ("Bearer sk-ftaas-wrong", "invalid_api_key"),
                                                 ("Basic abc", "invalid_api_key")])
def test_requests_without_a_valid_key_get_401(api: Api, authorization: str | None, code: str) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for method, path in [("GET", "/v1/files"), ("GET", "/v1/fine_tuning/jobs"), ("GET", "/v1/models"),
                         ("POST", "/v1/fine_tuning/jobs"), ("GET", "/v1/models/ftaas-tiny")]:
        assert_error(api.client.request(method, path, headers=headers), 401, code)


def test_a_revoked_key_is_refused_on_the_next_request(api: Api) -> None:
    from db import projects

    services = api.services
    with services.db.write() as session:
        _, key = projects.create_api_key(session, projects.ensure_project(session, "alpha"))
    assert api.client.get("/v1/models", headers=api.headers(key)).status_code == 200
    with services.db.write() as session:
        key_id = next(k.id for k, _ in projects.list_keys(session) if k.hint.endswith(key[-4:]))
        projects.revoke_key(session, key_id)
    assert_error(api.client.get("/v1/models", headers=api.headers(key)), 401, "invalid_api_key")


def test_keys_are_stored_only_as_hashes(api: Api) -> None:
    services = api.services
    with services.db.read() as session:
        stored = " ".join(str(v) for row in session.execute(text("SELECT * FROM api_keys")) for v in row)
        hashes = list(session.scalars(select(ApiKey.key_hash)))
    assert api.key not in stored and api.key[9:30] not in stored
    assert all(len(h) == 64 for h in hashes)


def test_health_and_docs_need_no_key(api: Api) -> None:
    assert api.client.get("/health/live").json() == {"status": "ok"}
    ready = api.client.get("/health/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "artifact_store": "ok"}
    assert api.client.get("/docs").status_code == 200
    paths = api.client.get("/openapi.json").json()["paths"]
    assert {"/v1/files", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel", "/v1/models/{model}"} <= set(paths)


# ------------------------------------------------------------------------------------ error shapes
def test_unknown_routes_and_methods_use_the_envelope(api: Api) -> None:
    assert_error(api.client.get("/v1/nowhere", headers=api.headers()), 404, "unknown_url")
    assert_error(api.client.put("/v1/models", headers=api.headers()), 405, "method_not_allowed")


def test_a_body_that_is_not_json_is_a_400(api: Api) -> None:
    response = api.client.post("/v1/fine_tuning/jobs", content=b'{"model": ',
                               headers={**api.headers(), "content-type": "application/json"})
    assert "not valid JSON" in assert_error(response, 400)["message"]


def test_empty_bodied_posts_are_accepted_as_the_sdk_sends_them(api: Api) -> None:
    """cancel/pause/resume arrive with Content-Type: application/json and no body."""
    response = api.client.post("/v1/fine_tuning/jobs/ftjob-01M8CM3A5HVGYDX9KR0EW2VDM4/cancel",
                               headers={**api.headers(), "content-type": "application/json", "content-length": "0"})
    assert_error(response, 404, "fine_tuning_job_not_found")


# ------------------------------------------------------------------------------------- body limits
def test_an_oversized_upload_is_refused_before_its_body_is_read(api: Api, tmp_path: Path) -> None:
    big = b"x" * (MAX_UPLOAD + 128 * 1024)
    assert_error(upload(api, big), 413, "request_too_large")
    artifacts = api.settings.data_dir / "artifacts"
    assert not [p for p in artifacts.rglob("*") if p.is_file()]


def test_an_oversized_chunked_upload_is_cut_off_with_413(api: Api) -> None:
    boundary = "ftaasboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\r\n").encode()

    def body():  # no Content-Length: httpx sends it chunked
        yield head
        for _ in range(40):
            yield b"y" * 16 * 1024

    response = api.client.post("/v1/files", content=body(), headers={
        **api.headers(), "content-type": f"multipart/form-data; boundary={boundary}"})
    assert_error(response, 413)
    assert not [p for p in (api.settings.data_dir / "artifacts").rglob("*") if p.is_file()]


def test_a_chunked_upload_is_answered_as_soon_as_it_crosses_the_limit(api: Api) -> None:
    """Not read to the end first: the server answers 413 while the client is still sending. Driven at the
    ASGI interface as a server drives it (the test client would read the whole body before the app runs)."""
    boundary = "ftaasboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\r\n").encode()
    chunks = [head] + [b"y" * 16 * 1024] * (4 * MAX_UPLOAD // (16 * 1024))  # 4x the limit, chunked
    pulled: list[int] = []
    sent: list[dict] = []

    async def receive() -> dict:
        index = len(pulled)
        pulled.append(index)
        return {"type": "http.request", "body": chunks[index], "more_body": index + 1 < len(chunks)}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/files", "raw_path": b"/v1/files", "query_string": b"", "root_path": "",
             "server": ("testserver", 80), "client": ("127.0.0.1", 1234),
             "headers": [(b"authorization", f"Bearer {api.key}".encode()), (b"transfer-encoding", b"chunked"),
                         (b"content-type", f"multipart/form-data; boundary={boundary}".encode())]}
    asyncio.run(api.client.app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 413
    # ... and the server closes the connection rather than reading (and discarding) the rest to reuse it.
    assert (b"connection", b"close") in start["headers"]
    assert sum(len(chunks[i]) for i in pulled) <= MAX_UPLOAD + 96 * 1024, len(pulled)  # near the limit, not 4x
    assert not [p for p in (api.settings.data_dir / "artifacts").rglob("*") if p.is_file()]


@pytest.mark.parametrize("authenticated", [True, False])
def test_an_oversized_chunked_json_body_is_a_413_not_a_parse_error(api: Api, authenticated: bool) -> None:
    payload = json.dumps({"model": "ftaas-tiny", "training_file": "file-x", "metadata": {"k": "v" * 100_000}})

    def body():  # no Content-Length: chunked
        for start in range(0, len(payload), 8192):
            yield payload[start:start + 8192].encode()

    headers = {**(api.headers() if authenticated else {}), "content-type": "application/json"}
    assert_error(api.client.post("/v1/fine_tuning/jobs", content=body(), headers=headers), 413, "request_too_large")


def test_an_oversized_json_body_is_a_413(api: Api) -> None:
    body = json.dumps({"model": "ftaas-tiny", "training_file": "file-x", "metadata": {"k": "v" * 100_000}})
    assert_error(api.client.post("/v1/fine_tuning/jobs", content=body,
                                 headers={**api.headers(), "content-type": "application/json"}), 413)


# ------------------------------------------------------------------------------------------ uploads
@pytest.mark.parametrize("name, purpose, data, status, code, param", [
    ("train.jsonl", "mystery", TRAINING, 400, None, "purpose"),
    ("train.txt", "fine-tune", TRAINING, 400, "invalid_file_format", "file"),
    ("train.jsonl", "fine-tune", b"", 400, "empty_file", "file"),
    ("../../etc/passwd.jsonl", "fine-tune", TRAINING, 200, None, None),
])
def test_upload_checks(api: Api, name: str, purpose: str, data: bytes, status: int, code: str | None,
                       param: str | None) -> None:
    response = upload(api, data, name=name, purpose=purpose)
    if status == 200:
        assert response.status_code == 200, response.text
        assert response.json()["filename"] == "passwd.jsonl"  # a name, never a path
        return
    assert_error(response, status, code, param)
    assert not [p for p in (api.settings.data_dir / "artifacts").rglob("*") if p.is_file()]


def test_an_upload_must_be_multipart_with_one_file_and_a_purpose(api: Api) -> None:
    assert_error(api.client.post("/v1/files", content=b"{}", headers={**api.headers(), "content-type": "application/json"}),
                 400, "invalid_content_type")
    assert_error(api.client.post("/v1/files", data={"purpose": "fine-tune"}, files={"other": ("a", b"1")},
                                 headers=api.headers()), 400)
    assert_error(api.client.post("/v1/files", files={"file": ("a.jsonl", TRAINING)}, headers=api.headers()),
                 400, param="purpose")


def test_uploaded_bytes_come_back_unchanged_and_results_files_are_not_uploadable(api: Api) -> None:
    file = upload(api).json()
    assert file["status"] == "uploaded" and file["bytes"] == len(TRAINING) and file["object"] == "file"
    content = api.client.get(f"/v1/files/{file['id']}/content", headers=api.headers())
    assert content.content == TRAINING
    assert_error(upload(api, purpose="fine-tune-results"), 400, param="purpose")


def test_a_processed_training_file_carries_its_token_counts_under_each_base_model(api: Api) -> None:
    """Counted with each base model's own tokenizer and chat template, as a job on it would encode the file: all
    tokens, the trained (assistant) ones, the longest example; checked here against the tokenizer's own
    chat-template tokenization and the assistant answers tokenized alone."""
    file_id = processed_file(api)
    file = api.client.get(f"/v1/files/{file_id}", headers=api.headers()).json()
    assert file["status"] == "processed"
    counts = file["token_counts"]
    assert set(counts) == set(api.settings.models.sources())  # every base model of the installation
    loader = WorkerContext(api.settings).loader
    for base_model, got in counts.items():
        tokenizer = loader.load_tokenizer(base_model)
        lines = [json.loads(line) for line in TRAINING.decode().splitlines()]
        lengths = [len(tokenizer.apply_chat_template(line["messages"], tokenize=True, return_dict=True)["input_ids"])
                   for line in lines]
        answers = [len(tokenizer(line["messages"][1]["content"], add_special_tokens=False)["input_ids"])
                   for line in lines]
        assert got["examples"] == 12 and got["tokens"] == sum(lengths) and got["longest_example"] == max(lengths)
        # the answer, and the template's end-of-turn marker after it (one to three tokens per answer)
        assert sum(answers) < got["trained_tokens"] <= sum(answers) + 3 * len(lines), (base_model, got)
        assert got["error"] is None
    listed = api.client.get("/v1/files", headers=api.headers()).json()["data"]
    assert next(f for f in listed if f["id"] == file_id)["token_counts"] == counts
    unvalidated = upload(api, purpose="user_data").json()
    assert unvalidated["token_counts"] is None  # only training files are validated and counted


# ---------------------------------------------------------------------------------------- pagination
def test_file_lists_paginate_by_cursor_and_filter_by_purpose(api: Api) -> None:
    ids = [upload(api, name=f"f{i}.jsonl").json()["id"] for i in range(5)]
    ids.append(upload(api, b"{}", name="batch.jsonl", purpose="batch").json()["id"])
    seen, after = [], None
    while True:
        params = {"limit": 2, **({"after": after} if after else {})}
        page = api.client.get("/v1/files", params=params, headers=api.headers()).json()
        seen += [f["id"] for f in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == list(reversed(ids))
    oldest_first = api.client.get("/v1/files", params={"order": "asc"}, headers=api.headers()).json()["data"]
    assert [f["id"] for f in oldest_first] == ids
    batch = api.client.get("/v1/files", params={"purpose": "batch"}, headers=api.headers()).json()["data"]
    assert [f["id"] for f in batch] == [ids[-1]]


@pytest.mark.parametrize("params", [{"after": "not-an-id"}, {"limit": 0}, {"limit": 10001}, {"order": "sideways"}])
def test_bad_list_parameters_are_400(api: Api, params: dict) -> None:
    assert_error(api.client.get("/v1/files", params=params, headers=api.headers()), 400)


# ------------------------------------------------------------------------------------- job requests
def job_body(file_id: str, **extra: object) -> dict:
    return {"model": "ftaas-tiny", "training_file": file_id, **extra}


@pytest.mark.parametrize("extra, param", [
    ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"n_epochs": 51}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"batch_size": 1000}}, "hyperparameters.batch_size"),
    ({"hyperparameters": {"learning_rate_multiplier": -1}}, "hyperparameters.learning_rate_multiplier"),
    ({"hyperparameters": {"n_epochs": "many"}}, "hyperparameters.n_epochs"),
    ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 3}}}}, "method.dpo.hyperparameters.beta"),
    ({"method": {"type": "reinforcement"}}, "method"),
    ({"method": {"type": "unsupervised"}}, "method.type"),
    ({"method": {"type": "supervised", "dpo": {}}}, "method"),
    ({"method": {"type": "dpo", "dpo": {"rehearsal": True}}}, "method.dpo"),
    ({"method": {"type": "dpo", "dpo": {"stop_when_learned": True}}}, "method.dpo"),
    ({"method": {"type": "supervised", "supervised": {"rehearsal": "sometimes"}}}, "method.supervised.rehearsal"),
    ({"suffix": "has:colon"}, "suffix"),
    ({"suffix": "x" * 65}, "suffix"),
    ({"seed": -1}, "seed"),
    ({"metadata": {str(i): "v" for i in range(17)}}, "metadata"),
    ({"integrations": [{"type": "wandb", "wandb": {"project": "p"}}]}, "integrations[0].type"),  # not configured
    ({"surprise": True}, "surprise"),
])
def test_out_of_range_job_parameters_are_400_naming_the_parameter(api: Api, extra: dict, param: str) -> None:
    file_id = processed_file(api)
    assert_error(api.client.post("/v1/fine_tuning/jobs", json=job_body(file_id, **extra), headers=api.headers()),
                 400, param=param)


def test_unknown_models_and_foreign_or_wrong_files_are_400(api: Api) -> None:
    mine = processed_file(api)
    theirs = upload(api, key=api.other_key).json()["id"]
    batch = upload(api, b"{}", name="b.jsonl", purpose="batch").json()["id"]
    broken = processed_file(api, b"[1]\n" + TRAINING)
    cases = [
        (job_body(mine, model="gpt-nope"), "model_not_found", "model"),
        (job_body(theirs), "file_not_found", "training_file"),
        (job_body("file-missing"), "file_not_found", "training_file"),
        (job_body(mine, validation_file=theirs), "file_not_found", "validation_file"),
        (job_body(batch), "invalid_training_file", "training_file"),
        (job_body(mine, method={"type": "dpo"}), "invalid_training_file", "training_file"),
    ]
    for body, code, param in cases:
        assert_error(api.client.post("/v1/fine_tuning/jobs", json=body, headers=api.headers()), 400, code, param)
    error = assert_error(api.client.post("/v1/fine_tuning/jobs", json=job_body(broken), headers=api.headers()),
                         400, "invalid_training_file", "training_file")
    assert "Line 1" in error["message"] and "array" in error["message"]


def test_a_created_job_echoes_every_field_the_sdk_reads(api: Api) -> None:
    file_id = processed_file(api)
    job = api.client.post("/v1/fine_tuning/jobs", headers=api.headers(), json=job_body(
        file_id, suffix="demo", seed=42, metadata={"team": "a"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}})).json()
    assert job["status"] == "validating_files" and job["object"] == "fine_tuning.job"
    assert job["hyperparameters"] == {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto"}
    # The method is recorded with every default filled in: what the job will run is on the job.
    assert job["method"] == {"type": "supervised", "supervised": {
        "hyperparameters": {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto"},
        "adapter": {"type": "lora", "r": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": "all-linear",
                    "init": "default"},
        "max_seq_len": 2048, "packing": True, "lr_scheduler": "linear", "warmup_ratio": 0.0, "n_checkpoints": None,
        "eval_interval": 10, "early_stopping": None, "stop_when_learned": False,
        "rehearsal": False, "gradient_checkpointing": "auto"}}
    expected_keys = {"id", "object", "created_at", "model", "organization_id", "status", "training_file",
                     "validation_file", "hyperparameters", "method", "result_files", "fine_tuned_model", "finished_at",
                     "trained_tokens", "estimated_finish", "seed", "error", "integrations", "metadata",
                     "user_provided_suffix", "knowledge_eval"}  # the last: an ftaas extension, null unless asked for
    assert set(job) == expected_keys and job["knowledge_eval"] is None
    assert (job["seed"], job["metadata"], job["result_files"], job["error"]) == (42, {"team": "a"}, [], None)
    events = api.client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", headers=api.headers()).json()["data"]
    assert [e["message"] for e in events] == [f"Validating training file: {file_id}",
                                              f"Created fine-tuning job: {job['id']}"]


def test_an_idempotency_key_returns_the_same_job_and_refuses_a_different_request(api: Api) -> None:
    file_id = processed_file(api)
    headers = {**api.headers(), "Idempotency-Key": "create-1"}
    first = api.client.post("/v1/fine_tuning/jobs", json=job_body(file_id), headers=headers).json()
    again = api.client.post("/v1/fine_tuning/jobs", json=job_body(file_id), headers=headers).json()
    assert again["id"] == first["id"]
    conflict = api.client.post("/v1/fine_tuning/jobs", json=job_body(file_id, suffix="other"), headers=headers)
    assert_error(conflict, 409, "idempotency_key_reused")
    assert conflict.headers["x-should-retry"] == "false"
    listed = api.client.get("/v1/fine_tuning/jobs", headers=api.headers()).json()["data"]
    assert [j["id"] for j in listed] == [first["id"]]


def test_the_active_job_quota_answers_429_with_retry_after(api: Api) -> None:
    file_id = processed_file(api)
    for _ in range(3):
        assert api.client.post("/v1/fine_tuning/jobs", json=job_body(file_id), headers=api.headers()).status_code == 200
    response = api.client.post("/v1/fine_tuning/jobs", json=job_body(file_id), headers=api.headers())
    assert_error(response, 429, "quota_exceeded")
    assert int(response.headers["retry-after"]) > 0 and response.headers["x-should-retry"] == "false"


def test_job_lists_filter_on_metadata(api: Api) -> None:
    file_id = processed_file(api)
    a = api.client.post("/v1/fine_tuning/jobs", json=job_body(file_id, metadata={"team": "a"}), headers=api.headers())
    api.client.post("/v1/fine_tuning/jobs", json=job_body(file_id, metadata={"team": "b"}), headers=api.headers())
    filtered = api.client.get("/v1/fine_tuning/jobs?metadata%5Bteam%5D=a", headers=api.headers()).json()
    assert [j["id"] for j in filtered["data"]] == [a.json()["id"]] and filtered["has_more"] is False


def test_model_names_with_colons_route_and_base_models_cannot_be_deleted(api: Api) -> None:
    assert api.client.get("/v1/models/ftaas-tiny", headers=api.headers()).json()["owned_by"] == "ftaas"
    assert_error(api.client.get("/v1/models/ft:ftaas-tiny:alpha::abcdefgh", headers=api.headers()), 404,
                 "model_not_found")
    assert_error(api.client.get("/v1/models/ft%3Aftaas-tiny%3Aalpha%3A%3Aabcdefgh", headers=api.headers()), 404,
                 "model_not_found")
    assert_error(api.client.delete("/v1/models/ftaas-tiny", headers=api.headers()), 403, "model_not_deletable")


# ----------------------------------------------------------------------------------- no 5xx, ever
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=12)
job_fields = st.fixed_dictionaries({}, optional={
    "model": json_values | st.just("ftaas-tiny"), "training_file": json_values, "validation_file": json_values,
    "hyperparameters": json_values | st.fixed_dictionaries({}, optional={
        "n_epochs": json_values, "batch_size": json_values, "learning_rate_multiplier": json_values}),
    "method": json_values | st.fixed_dictionaries({"type": st.sampled_from(["supervised", "dpo", "x"])}, optional={
        "supervised": json_values, "dpo": json_values}),
    "suffix": json_values, "seed": json_values, "metadata": json_values, "integrations": json_values})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=job_fields | json_values)
def test_no_job_request_body_produces_a_5xx(api: Api, body: object) -> None:
    response = api.client.post("/v1/fine_tuning/jobs", content=json.dumps(body),
                               headers={**api.headers(), "content-type": "application/json"})
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2000), name=st.text(min_size=1, max_size=80), purpose=st.text(max_size=20))
def test_no_upload_produces_a_5xx(api: Api, data: bytes, name: str, purpose: str) -> None:
    response = api.client.post("/v1/files", files={"file": (name, data)}, data={"purpose": purpose},
                               headers=api.headers())
    assert response.status_code < 500, response.text


# ------------------------------------------------------------------------------------ training options
@pytest.mark.parametrize("section, param", [
    ({"adapter": {"type": "ia3", "r": 8}}, "method.supervised.adapter"),
    ({"adapter": {"type": "prompt_tuning", "target_modules": ["q_proj"]}}, "method.supervised.adapter"),
    ({"adapter": {"type": "lora", "num_virtual_tokens": 8}}, "method.supervised.adapter"),
    ({"adapter": {"type": "dora", "init": "pissa"}}, "method.supervised.adapter"),
    ({"adapter": {"type": "lora", "r": 0}}, "method.supervised.adapter.r"),
    ({"adapter": {"type": "lora", "dropout": 1.0}}, "method.supervised.adapter.dropout"),
    ({"adapter": {"type": "lora", "target_modules": ["q_proj; DROP TABLE"]}}, "method.supervised.adapter.target_modules"),
    ({"adapter": {"type": "lora", "init": "magic"}}, "method.supervised.adapter.init"),
    ({"adapter": {"type": "adalora"}}, "method.supervised.adapter.type"),
    ({"adapter": {"type": "prefix_tuning"}, "packing": True}, "method.supervised"),
    ({"max_seq_len": 8}, "method.supervised.max_seq_len"),
    ({"lr_scheduler": "exponential"}, "method.supervised.lr_scheduler"),
    ({"warmup_ratio": 0.9}, "method.supervised.warmup_ratio"),
    ({"n_checkpoints": 0}, "method.supervised.n_checkpoints"),
    ({"early_stopping": {"patience": 0}}, "method.supervised.early_stopping.patience"),
    ({"early_stopping": {"patience": 2}}, "method.supervised.early_stopping"),  # no validation file
])
def test_impossible_training_options_are_refused_at_creation(api: Api, section: dict, param: str) -> None:
    file_id = processed_file(api)
    body = job_body(file_id, method={"type": "supervised", "supervised": section})
    assert_error(api.client.post("/v1/fine_tuning/jobs", json=body, headers=api.headers()), 400, param=param)


@pytest.mark.parametrize("section", [{"packing": True}, {"adapter": {"init": "olora"}}])
def test_dpo_refuses_packing_and_base_modifying_initialisations(api: Api, section: dict) -> None:
    preference = json.dumps({"input": {"messages": [{"role": "user", "content": "q"}]},
                             "preferred_output": [{"role": "assistant", "content": "good"}],
                             "non_preferred_output": [{"role": "assistant", "content": "bad"}]})
    file_id = processed_file(api, ("\n".join([preference] * 10) + "\n").encode())
    body = job_body(file_id, method={"type": "dpo", "dpo": section})
    assert_error(api.client.post("/v1/fine_tuning/jobs", json=body, headers=api.headers()), 400, param="method.dpo")


def test_training_options_are_recorded_with_their_defaults(api: Api) -> None:
    file_id = processed_file(api)
    body = job_body(file_id, validation_file=file_id, method={"type": "supervised", "supervised": {
        "adapter": {"type": "rslora", "r": 16}, "max_seq_len": 512, "lr_scheduler": "cosine", "warmup_ratio": 0.1,
        "n_checkpoints": 4, "eval_interval": 5, "early_stopping": {"patience": 2}}})
    recorded = api.client.post("/v1/fine_tuning/jobs", json=body, headers=api.headers()).json()["method"]["supervised"]
    assert recorded["adapter"] == {"type": "rslora", "r": 16, "alpha": 32.0, "dropout": 0.0,
                                   "target_modules": "all-linear", "init": "default"}
    assert (recorded["max_seq_len"], recorded["packing"], recorded["lr_scheduler"], recorded["warmup_ratio"],
            recorded["n_checkpoints"], recorded["eval_interval"], recorded["early_stopping"]) == (
        512, True, "cosine", 0.1, 4, 5, {"patience": 2, "min_delta": 0.0})
    prompt = api.client.post("/v1/fine_tuning/jobs", headers=api.headers(), json=job_body(
        file_id, method={"type": "supervised", "supervised": {"adapter": {"type": "prompt_tuning"}}})).json()
    assert prompt["method"]["supervised"]["adapter"] == {"type": "prompt_tuning", "num_virtual_tokens": 16}
    assert prompt["method"]["supervised"]["packing"] is False
