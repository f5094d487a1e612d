"""Comparisons on the server (`/v1/knowledge_evals` with `comparison`): the evaluated model and an original
answer held-out prompts and the eval reports how alike they are. Bad reference files are 400s naming the line;
a run (the worker's service function, in this process) gives the report, the per-item records and a chart."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from contracts.settings import DEMO_BASE_MODEL
from evals.comparison import reference_line
from tests.evals.test_api import error_of, http, upload
from worker.context import WorkerContext
from worker.knowledge_evals.service import run_standalone

WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                            "required": ["city"]}}}]


def prompts() -> list[dict[str, Any]]:
    asked: list[dict[str, Any]] = [{"messages": [{"role": "user", "content": f"Tell me about item {i}."}]}
                                   for i in range(4)]
    asked.append({"messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": WEATHER})
    asked.append({"messages": [{"role": "user", "content": "A JSON object, please."}],
                  "response_format": {"type": "json_object"}})
    return asked


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


@pytest.fixture
def live(start_serving):
    return start_serving()


def test_bad_comparisons_get_400_naming_the_field_or_line(live: Any) -> None:
    answered = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    with http(live) as client:
        def refused(comparison: dict[str, Any], **extra: Any) -> dict[str, Any]:
            return error_of(client.post("/knowledge_evals", json={"model": DEMO_BASE_MODEL,
                                                                  "comparison": comparison, **extra}))

        error = refused({"reference_file": "file-nope"})
        assert (error["code"], error["param"]) == ("file_not_found", "comparison.reference_file")
        not_json = upload(client, jsonl([answered]) + b"{oops\n")
        error = refused({"reference_file": not_json})
        assert error["code"] == "invalid_reference_file" and "line 2: not JSON" in error["message"]
        unanswered = upload(client, jsonl([answered, {"messages": [{"role": "user", "content": "Bye"}]}]))
        error = refused({"reference_file": unanswered})
        assert "line 2: the last message is not the original's answer" in error["message"]
        bad_request = upload(client, jsonl([answered, answered, {**answered, "tool_choice": "required"}]))
        error = refused({"reference_file": bad_request})
        assert "line 3" in error["message"] and "tool_choice" in error["message"], error
        extra = upload(client, jsonl([answered, {**answered, "temperature": 0.7}]))
        error = refused({"reference_file": extra})
        assert "line 2: unknown field 'temperature'" in error["message"], error  # never silently left out
        error = refused({"reference_file": unanswered, "reference_model": "ft:nobody:x"})
        assert (error["code"], error["param"]) == ("model_not_found", "comparison.reference_model")
        error = refused({"reference_file": unanswered, "reference_model": DEMO_BASE_MODEL}, suites=["control"])
        assert error["param"] == "comparison"
        error = refused({"reference_file": unanswered, "max_new_tokens": 0})
        assert "max_new_tokens" in json.dumps(error)
        # With a reference model the same file is a prompts file: accepted.
        accepted = client.post("/knowledge_evals", json={"model": DEMO_BASE_MODEL, "comparison": {
            "reference_file": unanswered, "reference_model": DEMO_BASE_MODEL}})
        assert accepted.status_code == 200 and accepted.json()["progress"]["total"] == 4, accepted.text


def test_a_comparison_reports_agreement_with_the_original_from_its_model_or_its_recorded_answers(
        live: Any, make_adapter: Any) -> None:
    tuned = live.register(make_adapter(5))
    with http(live) as client:
        prompts_file = upload(client, jsonl(prompts()), "held-out.jsonl")

        def run(model: str, comparison: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
            created = client.post("/knowledge_evals", json={"model": model, "comparison": {
                "max_new_tokens": 12, **comparison}})
            assert created.status_code == 200, created.text
            assert run_standalone(WorkerContext(live.settings), created.json()["id"]) == "succeeded"
            done = client.get(f"/knowledge_evals/{created.json()['id']}").json()
            report = client.get(f"/knowledge_evals/{done['id']}/report").json()
            items = [json.loads(line) for line in client.get(f"/knowledge_evals/{done['id']}/items").text.splitlines()]
            return done, report, items

        # The original is a model of the project, answering at run time; a judge (the base model) gives verdicts.
        done, report, items = run(tuned, {"reference_file": prompts_file, "reference_model": DEMO_BASE_MODEL,
                                          "judge_model": DEMO_BASE_MODEL})
        assert done["progress"] == {"done": 12, "total": 12} and done["spec_name"].startswith("comparison:")
        assert report["object"] == "comparison_report" and report["models"] == {
            "candidate": tuned, "reference": DEMO_BASE_MODEL}
        summary = report["summary"]
        assert summary["items"] == 6 and done["summary"]["comparison"]["agreement"] == summary["agreement"]
        assert summary["json_validity"]["candidate"]["n"] == 1
        assert 0 <= summary["agreement"]["ci_low"] <= summary["agreement"]["rate"] <= summary["agreement"]["ci_high"]
        assert len(items) == 6 and all("judge" in item and "similarity" in item for item in items)
        assert items[4]["messages"] == prompts()[4]["messages"]
        chart = client.get(f"/knowledge_evals/{done['id']}/comparison_chart")
        assert chart.status_code == 200 and chart.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert client.get(f"/knowledge_evals/{done['id']}/chart").status_code == 404
        assert client.get(f"/knowledge_evals/{done['id']}/spec").json()["reference_model"] == DEMO_BASE_MODEL

        # The original's answers recorded in a file (the original may be gone): the original itself agrees
        # with them on every item (greedy, batch-invariant decoding), the copy exactly as often as above.
        recorded = upload(client, jsonl([reference_line(request, item["reference"])
                                         for request, item in zip(prompts(), items, strict=True)]), "reference.jsonl")
        _, itself, _ = run(DEMO_BASE_MODEL, {"reference_file": recorded})
        assert itself["summary"]["agreement"]["count"] == 6, itself["summary"]
        assert itself["models"]["reference"] == f"the answers in {recorded}"
        _, again, _ = run(tuned, {"reference_file": recorded})
        assert again["summary"]["agreement"] == summary["agreement"]

        other = httpx.Client(base_url=live.base_url + "/v1", headers={"Authorization": f"Bearer {live.other_key}"})
        assert other.get(f"/knowledge_evals/{done['id']}/report").status_code == 404
        error = error_of(other.post("/knowledge_evals", json={"model": DEMO_BASE_MODEL,
                                                              "comparison": {"reference_file": recorded}}))
        assert error["code"] == "file_not_found"  # another project's file is not found, never read
