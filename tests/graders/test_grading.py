"""Checking graders and grading samples: every grader type, the error flags OpenAI's run response reports,
and a multi grader's sub-rewards. Model graders talk HTTP to a scripted OpenAI-compatible server here (the
official SDK on one side, a real socket between); tests/e2e/test_graders_api.py runs them against ftaas's own
engine."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from contracts.errors import InvalidRequest
from contracts.graders import Grader
from graders.grading import ERROR_FLAGS, GradingContext, check, grade, item_fields
from graders.model_graders import OpenAICompatibleEndpoint
from graders.samples import Sample

GRADER: TypeAdapter[Any] = TypeAdapter(Grader)
NO_PYTHON = GradingContext(python_available=lambda: "not in this test")


def parse(data: dict) -> Any:
    return GRADER.validate_python(data)


def one(grader: dict, text: str, item: dict | None = None, context: GradingContext = NO_PYTHON) -> Any:
    parsed = parse(grader)
    check(parsed, context)
    return grade(parsed, [Sample(text)], [item or {}], context)[0]


def string_check(operation: str, reference: str = "{{item.answer}}") -> dict:
    return {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": reference,
            "operation": operation}


@pytest.mark.parametrize("operation, text, reward", [
    ("eq", "Paris", 1.0), ("eq", "paris", 0.0), ("ne", "Lyon", 1.0), ("ne", "Paris", 0.0),
    ("like", "It is Paris.", 1.0), ("like", "It is PARIS.", 0.0), ("ilike", "It is PARIS.", 1.0),
    ("ilike", "It is Lyon.", 0.0),
])
def test_string_check_operations(operation: str, text: str, reward: float) -> None:
    result = one(string_check(operation), text, {"answer": "Paris"})
    assert result.reward == reward and not result.failed


def test_a_missing_item_field_is_an_invalid_variable_error_with_reward_zero() -> None:
    result = one(string_check("eq"), "Paris", {"question": "?"})
    assert result.reward == 0.0 and result.errors["invalid_variable_error"] is True
    response = result.response()
    assert set(ERROR_FLAGS) <= set(response["metadata"]["errors"]) and response["metadata"]["type"] == "string_check"


def test_output_json_is_the_sample_parsed_and_a_sample_that_is_not_json_is_a_sample_parse_error() -> None:
    grader = string_check("eq", "{{item.city}}") | {"input": "{{sample.output_json.city}}"}
    assert one(grader, '{"city": "Oslo"}', {"city": "Oslo"}).reward == 1.0
    result = one(grader, "Oslo", {"city": "Oslo"})
    assert result.errors["sample_parse_error"] is True and result.reward == 0.0


def test_text_similarity_grades_with_its_metric() -> None:
    grader = {"type": "text_similarity", "name": "close", "input": "{{sample.output_text}}",
              "reference": "{{item.answer}}", "evaluation_metric": "fuzzy_match"}
    assert one(grader, "kitten", {"answer": "sitting"}).reward == pytest.approx(8 / 13)


def test_item_fields_lists_what_the_templates_read() -> None:
    grader = parse({"type": "multi", "name": "m", "calculate_output": "a + b", "graders": {
        "a": string_check("eq", "{{item.answer}}"),
        "b": {"type": "score_model", "name": "judge", "model": "m", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "{{item.rubric}} {{sample.output_text}}"}]}]}}})
    assert item_fields(grader) == {"answer", "rubric"}


@pytest.mark.parametrize("grader, param, words", [
    (string_check("eq", "{{item.answer"), "grader.reference", "never closed"),
    (string_check("eq", "{{answer}}"), "grader.reference", "unknown namespace"),
    ({"type": "multi", "name": "m", "calculate_output": "a + c", "graders": {"a": string_check("eq")}},
     "grader.calculate_output", "not one of its graders"),
    ({"type": "multi", "name": "m", "calculate_output": "a", "graders": {"a": string_check("eq", "{{x}}")}},
     "grader.graders.a.reference", "unknown namespace"),
    ({"type": "python", "name": "p", "source": "def grade(s, i) return 1"}, "grader.source", "does not compile"),
    ({"type": "python", "name": "p", "source": "def other(s, i):\n    return 1"}, "grader.source", r"grade\(sample, item\)"),
    ({"type": "python", "name": "p", "source": "def grade(s, i):\n    return 1"}, "grader.type", "cannot run"),
    ({"type": "score_model", "name": "j", "model": "m", "input": [{"role": "user", "content": "x"}]}, "grader.model",
     "need a model endpoint"),
])
def test_graders_that_cannot_run_are_refused_naming_the_field(grader: dict, param: str, words: str) -> None:
    with pytest.raises(InvalidRequest, match=words) as caught:
        check(parse(grader), NO_PYTHON)
    assert caught.value.param == param


@pytest.mark.parametrize("grader, words", [
    ({"type": "label_model", "name": "l", "model": "m", "input": [{"role": "user", "content": "x"}],
      "labels": ["good", "bad"], "passing_labels": ["great"]}, "passing_labels must be among labels"),
    ({"type": "score_model", "name": "s", "model": "m", "input": [{"role": "user", "content": "x"}], "range": [1, 0]},
     "two numbers, the lower first"),
    ({"type": "score_model", "name": "s", "model": "m", "input": [
        {"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]}, "not supported"),
    ({"type": "multi", "name": "m", "calculate_output": "x", "graders": {"not a name": string_check("eq")}},
     "identifiers"),
    ({"type": "string_check", "name": "s", "input": "a", "reference": "b", "operation": "regex"}, "operation"),
    ({"type": "text_similarity", "name": "t", "input": "a", "reference": "b", "evaluation_metric": "bertscore"},
     "evaluation_metric"),
])
def test_the_wire_shape_refuses_impossible_graders(grader: dict, words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        parse(grader)


def test_multi_combines_sub_rewards_by_its_formula() -> None:
    grader = {"type": "multi", "name": "both", "calculate_output": "0.75 * exact + 0.25 * close", "graders": {
        "exact": string_check("eq"),
        "close": {"type": "text_similarity", "name": "close", "input": "{{sample.output_text}}",
                  "reference": "{{item.answer}}", "evaluation_metric": "fuzzy_match"}}}
    result = one(grader, "kitten", {"answer": "sitting"})
    assert result.sub_rewards == {"exact": 0.0, "close": pytest.approx(8 / 13)}
    assert result.reward == pytest.approx(0.25 * 8 / 13)


def test_the_sdk_s_single_grader_form_of_multi_is_named_by_its_grader() -> None:
    grader = parse({"type": "multi", "name": "m", "calculate_output": "exact * 2", "graders": string_check("eq")})
    assert list(grader.graders) == ["exact"]


def test_a_formula_that_fails_on_the_values_is_a_formula_error() -> None:
    grader = {"type": "multi", "name": "m", "calculate_output": "1 / exact", "graders": {"exact": string_check("eq")}}
    result = one(grader, "Lyon", {"answer": "Paris"})
    assert result.errors["formula_parse_error"] is True and result.reward == 0.0


# ---------------------------------------------------------------------------------- model graders over HTTP
class ScriptedChat:
    """An OpenAI-compatible chat server on a real socket that answers with the next scripted reply."""

    def __init__(self) -> None:
        self.replies: list[tuple[int, dict]] = []
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                status, message = outer.replies.pop(0)
                payload = {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", **message}}],
                           "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}} \
                    if status == 200 else {"error": {"message": "boom", "type": "server_error"}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


@pytest.fixture
def chat() -> Iterator[ScriptedChat]:
    server = ScriptedChat()
    yield server
    server.server.shutdown()


@pytest.fixture
def context(chat: ScriptedChat) -> Iterator[GradingContext]:
    endpoint = OpenAICompatibleEndpoint(chat.url, "key", max_retries=0)
    yield GradingContext(endpoint=endpoint, python_available=lambda: "not in this test")
    endpoint.close()


SCORE = {"type": "score_model", "name": "judge", "model": "grader-model", "range": [0, 10],
         "sampling_params": {"temperature": 0.3, "seed": 7, "max_completions_tokens": 50},
         "input": [{"role": "developer", "content": "Grade the answer to {{item.question}}."},
                   {"role": "user", "content": "{{sample.output_text}}"}]}
LABEL = {"type": "label_model", "name": "tone", "model": "grader-model", "labels": ["polite", "rude", "neutral"],
         "passing_labels": ["polite", "neutral"], "input": [{"role": "user", "content": "Tone of: {{sample.output_text}}"}]}


def test_score_model_sends_the_rendered_prompt_and_reads_the_score(chat: ScriptedChat, context: GradingContext) -> None:
    chat.replies.append((200, {"content": '{"result": 7.5}'}))
    result = one(SCORE, "Forty-two.", {"question": "6 x 7?"}, context)
    assert result.reward == 7.5 and not result.failed
    sent = chat.requests[0]
    assert sent["messages"][0] == {"role": "system", "content": "Grade the answer to 6 x 7?."}
    assert sent["messages"][1] == {"role": "user", "content": "Forty-two."}
    assert sent["response_format"]["type"] == "json_schema"
    assert (sent["temperature"], sent["seed"], sent["max_tokens"]) == (0.3, 7, 50)
    assert result.response()["model_grader_token_usage_per_model"]["grader-model"]["total_tokens"] == 13


@pytest.mark.parametrize("status, message, flag", [
    (200, {"content": "seven"}, "model_grader_parse_error"),
    (200, {"content": '{"result": 11}'}, "model_grader_parse_error"),
    (200, {"content": None, "refusal": "I can't grade that."}, "model_grader_refusal_error"),
    (500, {}, "model_grader_server_error"),
])
def test_score_model_failures_are_flagged(chat: ScriptedChat, context: GradingContext, status: int, message: dict,
                                          flag: str) -> None:
    chat.replies.append((status, message))
    result = one(SCORE, "x", {"question": "q"}, context)
    assert result.errors[flag] is True and result.reward == 0.0


@pytest.mark.parametrize("label, reward", [("polite", 1.0), ("neutral", 1.0), ("rude", 0.0)])
def test_label_model_passes_on_passing_labels(chat: ScriptedChat, context: GradingContext, label: str,
                                              reward: float) -> None:
    chat.replies.append((200, {"content": json.dumps({"result": label})}))
    result = one(LABEL, "Thank you!", {}, context)
    assert result.reward == reward
    assert chat.requests[0]["response_format"]["json_schema"]["schema"]["properties"]["result"]["enum"] == \
        ["polite", "rude", "neutral"]


def test_a_label_that_is_not_a_label_is_a_parse_error(chat: ScriptedChat, context: GradingContext) -> None:
    chat.replies.append((200, {"content": '{"result": "sarcastic"}'}))
    assert one(LABEL, "Sure.", {}, context).errors["model_grader_parse_error"] is True
