"""The comparison of a copy with its original, item by item, on hand-worked answers."""

from __future__ import annotations

import json

import pytest

from evals.comparison import compare, verdict
from evals.report import wilson

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def call(name: str, **arguments: object) -> dict:
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def test_each_item_records_agreement_similarity_tool_calls_and_json_validity() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    requests = [
        {"messages": [{"role": "user", "content": "Capital of France?"}]},
        {"messages": [{"role": "user", "content": "Say hi"}]},
        {"messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": [WEATHER]},
        {"messages": [{"role": "user", "content": "Weather in Rome?"}], "tools": [WEATHER]},
        {"messages": [{"role": "user", "content": "A number"}],
         "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}},
    ]
    references = [{"content": "Paris."}, {"content": "Hello there"},
                  {"content": None, "tool_calls": [call("get_weather", city="Oslo", unit="c")]},
                  {"content": None, "tool_calls": [call("get_weather", city="Rome")]},
                  {"content": '{"n": 3}'}]
    candidates = [{"content": "  Paris. "}, {"content": "Hello"},
                  # the same arguments in another order and spacing: the same call
                  {"content": None, "tool_calls": [{"id": "x", "type": "function", "function": {
                      "name": "get_weather", "arguments": '{ "unit": "c", "city": "Oslo" }'}}]},
                  {"content": None, "tool_calls": [call("get_weather", city="Milan")]},
                  {"content": '{"n": "three"}'}]
    report = compare(requests, references, candidates)
    items = report["items"]
    assert [item["exact"] for item in items] == [True, False, True, False, False]
    assert items[1]["similarity"] == pytest.approx(2 * 5 / (11 + 5))  # Indel: 2 x common / total length
    assert items[2]["tool_calls"] == {"names_agree": True, "arguments_agree": True}
    assert items[3]["tool_calls"] == {"names_agree": True, "arguments_agree": False}
    assert items[4]["json"] == {"reference_valid": True, "candidate_valid": False}
    summary = report["summary"]
    assert summary["agreement"]["count"] == 2 and summary["agreement"]["n"] == 5
    low, high = wilson(2, 5, 0.95)
    assert (summary["agreement"]["ci_low"], summary["agreement"]["ci_high"]) == (round(low, 6), round(high, 6))
    assert summary["tool_calls"]["names"]["rate"] == 1.0 and summary["tool_calls"]["arguments"]["rate"] == 0.5
    assert summary["json_validity"]["reference"]["rate"] == 1.0 and summary["json_validity"]["candidate"]["rate"] == 0
    assert "judge" not in summary


def test_the_judge_sees_the_answers_in_a_drawn_order_and_its_verdicts_are_mapped_back() -> None:
    requests = [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(40)]
    references = [{"content": f"reference {i}"} for i in range(40)]
    candidates = [{"content": f"candidate {i}"} for i in range(40)]
    shown_first: list[str] = []

    def judge(prompts: list[tuple[str, str]]) -> list[str]:
        # A judge that always prefers the candidate's answer, wherever it is shown.
        replies = []
        for _, user in prompts:
            first = user.split("Answer A:\n", 1)[1].split("\n", 1)[0]
            shown_first.append(first.split()[0])
            replies.append("A" if first.startswith("candidate") else "B.")
        return replies

    report = compare(requests, references, candidates, judge=judge, seed=3)
    assert 10 < shown_first.count("candidate") < 30  # both orders are used
    judged = report["summary"]["judge"]
    assert judged["candidate_preferred"]["count"] == 40 and judged["reference_preferred"]["count"] == 0
    assert judged["candidate_at_least_as_good"]["rate"] == 1.0
    assert verdict("tie", True) == "tie" and verdict("maybe", True) is None and verdict("B", False) == "candidate"


def test_held_out_prompts_keep_what_the_request_asked_for() -> None:
    """A prompts line's tools, parallel_tool_calls and response_format reach both models (so JSON validity is
    judged against the format asked for); only the answer and the training-only weights are left out."""
    from contracts.files.chat_lines import prompt_of

    line = {"messages": [{"role": "user", "content": "A number", "weight": 1},
                         {"role": "assistant", "content": '{"n": 1}'}],
            "tools": [WEATHER], "parallel_tool_calls": False, "response_format": {"type": "json_object"}}
    assert prompt_of(line) == {"messages": [{"role": "user", "content": "A number"}], "tools": [WEATHER],
                               "parallel_tool_calls": False, "response_format": {"type": "json_object"}}
    assert prompt_of({"messages": [{"role": "system", "content": "no question"}]}) is None
