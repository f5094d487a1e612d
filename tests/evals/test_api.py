"""/v1/knowledge_evals over HTTP: bad specs and bad suite files are 400s naming the field or line at fault;
a created eval runs in a worker (here the worker's service function, in this process) and its report,
items, chart and job-free summary come back through the API."""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import pytest

from contracts.settings import DEMO_BASE_MODEL
from evals.builtin import generate_suite
from evals.items import dump_suite
from evals.spec import suite_spec
from worker.context import WorkerContext
from worker.knowledge_evals.service import run_standalone


def http(live: Any) -> httpx.Client:
    return httpx.Client(base_url=live.base_url + "/v1", headers={"Authorization": f"Bearer {live.key}"}, timeout=60)


def upload(client: httpx.Client, content: bytes, name: str = "suite.jsonl") -> str:
    response = client.post("/files", files={"file": (name, content)}, data={"purpose": "evals"})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def good_spec() -> dict[str, Any]:
    items = generate_suite("fictional_people", seed=1, size=1)
    return suite_spec([("builtin://fictional_people?seed=1&size=1", items)], name="people")


def error_of(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()["error"]


@pytest.fixture
def live(start_serving):
    return start_serving()


def test_bad_specs_get_400_naming_the_field(live: Any) -> None:
    cases: list[tuple[Any, str]] = []

    spec = good_spec()
    del spec["datasets"]
    cases.append((spec, "spec"))
    spec = good_spec()
    spec["datasets"][0]["splits"][1]["scorer"] = "nope"
    cases.append((spec, "spec.datasets.0.splits.1.scorer"))
    spec = good_spec()
    spec["datasets"][0]["splits"][0]["counts_toward"] = "everything"
    cases.append((spec, "spec.datasets.0.splits.0.counts_toward"))
    spec = good_spec()
    spec["generation"]["temperature"] = -1
    cases.append((spec, "spec.generation.temperature"))
    spec = good_spec()
    spec["scorers"]["exact"]["normalize"] = ["shout"]
    cases.append((spec, "spec.scorers.exact.normalize.0"))
    spec = good_spec()
    spec["aggregation"]["headline"]["memorization"] = {"fictional_people": "missing_split"}
    cases.append((spec, "spec.aggregation.headline.memorization.fictional_people"))
    spec = good_spec()
    spec["scorers"]["judge"] = {"type": "llm_judge", "judge_model": "ftaas-tiny", "judge_prompt_id": "nope",
                                "verdict_map": {"Correct": True}}
    cases.append((spec, "spec.scorers.judge.judge_prompt_id"))
    spec = good_spec()
    spec["datasets"][0]["splits"][0]["source"]["uri"] = "/etc/passwd"
    cases.append((spec, "spec.datasets.0.splits.0.source.uri"))
    spec = good_spec()
    spec["datasets"][0]["splits"][0]["source"]["sha256"] = "0" * 64
    cases.append((spec, "spec.datasets.0.splits.0.source.sha256"))
    spec = good_spec()
    spec["generation"]["temperature"] = 3  # the schema allows it; the serving engine does not
    cases.append((spec, "spec.generation.temperature"))
    spec = good_spec()
    spec["name"] = "n" * 200
    cases.append((spec, "spec.name"))
    spec = good_spec()
    spec["generation"]["chat_template"] = "alpaca"
    cases.append((spec, "spec.generation.chat_template"))
    spec = good_spec()
    spec["scorers"]["judge"] = {"type": "llm_judge", "judge_model": "ft:not-mine", "judge_prompt_id":
                                "ftaas.short_answer.v1", "verdict_map": {"Correct": True}}
    spec["datasets"][0]["splits"][0]["scorer"] = "judge"
    cases.append((spec, "spec.scorers.judge.judge_model"))
    spec = good_spec()
    spec["datasets"][0]["splits"][0]["prompt_field"] = "question"
    cases.append((spec, "spec.datasets.0.splits.0: line 1"))
    with http(live) as client:
        for spec, param in cases:
            error = error_of(client.post("/knowledge_evals", json={"model": DEMO_BASE_MODEL, "spec": spec}))
            assert error["param"] == param, (param, error)
            assert error["type"] == "invalid_request_error" and error["message"]
        error = error_of(client.post("/knowledge_evals", json={"model": DEMO_BASE_MODEL, "spec": good_spec(),
                                                               "suites": ["control"]}))
        assert error["param"] == "spec"
        error = error_of(client.post("/knowledge_evals", json={"model": "ft:nope", "suites": ["control"]}), 404)
        assert error["param"] == "model"
        # Controls alone measure nothing that was taught: a spec needs at least one dataset.
        error = error_of(client.post("/knowledge_evals", json={"model": DEMO_BASE_MODEL, "suites": ["control"]}))
        assert error["param"] == "suites"


def test_bad_suite_files_get_400_naming_the_line(live: Any) -> None:
    lines = dump_suite(generate_suite("control", seed=2, size=4)).decode().splitlines()
    broken_json = "\n".join([lines[0], lines[1], "{not json", lines[3]]).encode()
    missing_field = json.loads(lines[2])
    del missing_field["reference"]
    missing = "\n".join([lines[0], lines[1], json.dumps(missing_field)]).encode()
    bad_variant = json.loads(lines[1])
    bad_variant["variant"] = "sideways"
    with http(live) as client:
        for content, line, field in ((broken_json, 3, None), (missing, 3, "reference"),
                                     (f"{lines[0]}\n{json.dumps(bad_variant)}\n".encode(), 2, "variant")):
            file_id = upload(client, content)
            error = error_of(client.post("/knowledge_evals", json={"model": DEMO_BASE_MODEL, "suites": [file_id]}))
            expected = f"suites.0: line {line}" + (f": {field}" if field else "")
            assert error["param"] == expected and f"line {line}" in error["message"], error
        not_utf8 = upload(client, lines[0].encode() + b"\n" + lines[1].encode().replace(b"?", b"\xff?"))
        error = error_of(client.post("/knowledge_evals", json={"model": DEMO_BASE_MODEL, "suites": [not_utf8]}))
        assert error["param"] == "suites.0: line 2" and "UTF-8" in error["message"]
        error = error_of(client.post("/knowledge_evals", json={"model": DEMO_BASE_MODEL,
                                                               "suites": ["api_renames?size=2"],
                                                               "judge_model": "ft:nobody"}))
        assert error["param"] == "judge_model" and error["code"] == "model_not_found"
        error = error_of(client.post("/knowledge_evals", json={"model": DEMO_BASE_MODEL,
                                                               "suites": ["builtin:no_such_suite"]}))
        assert error["param"] == "suites.0"
        error = error_of(client.post("/knowledge_evals", json={"model": DEMO_BASE_MODEL,
                                                               "suites": ["builtin:control?size=100000"]}))
        assert error["param"] == "suites.0"
        # The same checks guard a job's attached eval, under its own field name.
        training = upload(client, b"\n".join(json.dumps({"messages": [
            {"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}).encode()
            for i in range(12)), "train.jsonl")
        file_id = upload(client, broken_json)
        body = {"model": DEMO_BASE_MODEL, "training_file": training, "knowledge_eval": {"suites": [file_id]}}
        error = error_of(client.post("/fine_tuning/jobs", json=body))
        assert error["param"] == "knowledge_eval.suites.0: line 3"


def test_an_eval_runs_and_its_results_come_back(live: Any, make_adapter: Any) -> None:
    tuned = live.register(make_adapter(5))
    items = generate_suite("api_renames", seed=4, size=3)
    with http(live) as client:
        suite_file = upload(client, dump_suite(items))
        body = {"model": tuned, "suites": [suite_file, "builtin:control?size=6&seed=1"], "max_new_tokens": 8,
                "metadata": {"purpose": "test"}}
        created = client.post("/knowledge_evals", json=body).json()
        assert created["status"] == "queued" and created["progress"] == {"done": 0, "total": 2 * (6 + 6)}
        assert created["base_model"] == DEMO_BASE_MODEL and created["metadata"] == {"purpose": "test"}
        assert error_of(client.get(f"/knowledge_evals/{created['id']}/report"), 409)["code"] == "eval_not_finished"

        assert run_standalone(WorkerContext(live.settings), created["id"]) == "succeeded"
        assert run_standalone(WorkerContext(live.settings), created["id"]) == "not-claimed"  # duplicate delivery

        done = client.get(f"/knowledge_evals/{created['id']}").json()
        assert done["status"] == "succeeded" and done["progress"] == {"done": 24, "total": 24}
        assert set(done["summary"]) >= {"memorization", "generalization"}
        report = client.get(f"/knowledge_evals/{created['id']}/report").json()
        # The random demo model knows no control answer: forgetting is reported as unmeasurable, not as 0.
        if report["controls"][0]["base"]["correct"] == 0:
            assert "forgetting" not in report["summary"]
            assert any("forgetting cannot be measured" in w for w in report["warnings"])
        assert report["tuned_model"]["id"] == tuned and report["spec"]["sha256"] == created["spec_sha256"]
        assert report["summary"]["memorization"]["mean_tuned"] == done["summary"]["memorization"]["mean_tuned"]
        items_lines = client.get(f"/knowledge_evals/{created['id']}/items").text.splitlines()
        assert len(items_lines) == 12 and all(json.loads(line)["tuned"]["response"] is not None for line in items_lines)
        chart = client.get(f"/knowledge_evals/{created['id']}/chart")
        assert chart.headers["content-type"] == "image/png" and chart.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(done["result_files"]) == 4
        stored_spec = client.get(f"/knowledge_evals/{created['id']}/spec").json()
        assert stored_spec["name"] == report["spec"]["name"] and "datasets" in stored_spec
        listed = client.get("/knowledge_evals").json()
        assert listed["data"][0]["id"] == created["id"]
        assert error_of(client.post(f"/knowledge_evals/{created['id']}/cancel"), 409)["code"] == \
            "invalid_state_transition"

        other = httpx.Client(base_url=live.base_url + "/v1", headers={"Authorization": f"Bearer {live.other_key}"})
        assert other.get(f"/knowledge_evals/{created['id']}").status_code == 404


def test_a_queued_eval_can_be_cancelled_and_is_then_never_run(live: Any) -> None:
    with http(live) as client:
        created = client.post("/knowledge_evals", json={"model": DEMO_BASE_MODEL,
                                                        "suites": ["fictional_people?size=2"]}).json()
        cancelled = client.post(f"/knowledge_evals/{created['id']}/cancel").json()
        assert cancelled["status"] == "cancelled"
        assert client.post(f"/knowledge_evals/{created['id']}/cancel").json()["status"] == "cancelled"
    assert run_standalone(WorkerContext(live.settings), created["id"]) == "not-claimed"


def test_the_example_spec_shape_is_accepted_when_its_sources_are_allowed(live: Any) -> None:
    spec = copy.deepcopy(good_spec())
    spec["controls"] = [{"id": "general", "source": {"uri": "builtin://control?size=5", "format": "jsonl"},
                         "prompt_field": "prompt", "reference_field": "reference", "scorer": "exact", "max_items": 3}]
    with http(live) as client:
        created = client.post("/knowledge_evals", json={"model": DEMO_BASE_MODEL, "spec": spec})
        assert created.status_code == 200, created.text
        # One person: 6 memorization + 6 rephrased + 6 secondary questions (no pairs to compare), 3 controls;
        # the base model is the evaluated model, so each is answered once.
        assert created.json()["progress"]["total"] == 6 + 6 + 6 + 3


def test_the_judge_is_any_openai_compatible_endpoint_here_ftaas_itself(live: Any, make_adapter: Any) -> None:
    """FTAAS_EVAL_JUDGE_BASE_URL points the judge at an endpoint; here, this very server over HTTP. The demo
    model's verdicts are rarely 'Correct' or 'Incorrect': those fall back to exact match, and are counted."""
    tuned = live.register(make_adapter(9))
    with http(live) as client:
        created = client.post("/knowledge_evals", json={
            "model": tuned, "suites": ["builtin:api_renames?size=2&seed=3"], "judge_model": DEMO_BASE_MODEL,
            "max_new_tokens": 6}).json()
        assert "id" in created, created
        before = client.get(live.base_url + "/metrics").text
        settings = live.settings.replaced(eval_judge_base_url=live.base_url + "/v1", eval_judge_api_key=live.key)
        assert run_standalone(WorkerContext(settings), created["id"]) == "succeeded"
        after = client.get(live.base_url + "/metrics").text
        report = client.get(f"/knowledge_evals/{created['id']}/report").json()
        lines = [json.loads(line) for line in client.get(f"/knowledge_evals/{created['id']}/items").text.splitlines()]
    judged = [line for line in lines if line["split_id"] in ("memorization", "rephrased")
              and line["answer_type"] == "short_text"]
    assert judged, "the suite has short-text splits for the judge"
    raw = [line[role]["judge_raw"] for line in judged for role in ("base", "tuned") if line[role]["response"].strip()]
    assert raw and all(isinstance(text, str) for text in raw)  # every non-empty answer went to the judge
    used = report["scorers_used"]["judge"]
    assert used["type"] == "llm_judge" and used["judge_model"] == DEMO_BASE_MODEL
    assert len(used["judge_prompt_sha256"]) == 64
    unparseable = sum(not any(word in text.lower() for word in ("correct", "incorrect")) for text in raw)
    assert used["unparseable_verdicts"] >= unparseable
    assert all(line[role]["correct"] is not None for line in judged for role in ("base", "tuned"))  # fell back

    def served(text: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("ftaas_serving_sequences_total{") and DEMO_BASE_MODEL in line)

    assert served(after) - served(before) >= len(raw)  # the verdicts came over HTTP from this server


def test_a_judge_that_stays_down_fails_the_eval_after_its_attempts(live: Any) -> None:
    """An unreachable judge is an infrastructure error: the eval goes back to the queue, and after
    FTAAS_MAX_ATTEMPTS it fails with the reason (never requeued forever)."""
    with http(live) as client:
        created = client.post("/knowledge_evals", json={"model": DEMO_BASE_MODEL, "judge_model": DEMO_BASE_MODEL,
                                                        "suites": ["api_renames?size=1"], "max_new_tokens": 4}).json()
        settings = live.settings.replaced(eval_judge_base_url="http://127.0.0.1:9/v1")
        outcomes = [run_standalone(WorkerContext(settings), created["id"]) for _ in range(live.settings.work.max_attempts + 1)]
        assert outcomes == ["requeued"] * (live.settings.work.max_attempts - 1) + ["failed", "not-claimed"]
        failed = client.get(f"/knowledge_evals/{created['id']}").json()
    assert failed["status"] == "failed" and failed["error"]["code"] == "judge_unavailable"
    assert f"after {live.settings.work.max_attempts} attempts" in failed["error"]["message"]


def test_a_stale_workers_late_run_never_breaks_the_published_results(live: Any) -> None:
    """Every run stores its objects under keys of its own: a worker that lost its lease and finishes late
    writes beside the winner's files, not over them."""
    from worker.knowledge_evals.service import evaluate

    with http(live) as client:
        created = client.post("/knowledge_evals", json={"model": DEMO_BASE_MODEL, "max_new_tokens": 4,
                                                        "suites": ["fictional_people?size=1"]}).json()
        assert run_standalone(WorkerContext(live.settings), created["id"]) == "succeeded"
        before = client.get(f"/knowledge_evals/{created['id']}/report").json()
        with live.services.db.read() as session:
            from db import knowledge_evals

            row = knowledge_evals.get_any_project(session, created["id"])
        published = set(live.services.store.list_keys(f"evals/{row.id}/"))
        assert len(published) == 4
        late = evaluate(WorkerContext(live.settings), eval_id=row.id, project_id=row.project_id,
                        spec_document=row.spec, model=row.model, base_model=row.base_model)
        assert {f.storage_key for f in late.file_rows}.isdisjoint(published)
        assert published < set(live.services.store.list_keys(f"evals/{row.id}/"))
        after = client.get(f"/knowledge_evals/{created['id']}/report")
        assert after.status_code == 200 and after.json() == before
