"""Training-file validation: every error class with its code and 1-based line number."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.factories import chat_line
from worker.files.validation import ValidationLimits, iter_lines, validate_jsonl

GOOD = chat_line("What is 2+2?", "4")
LIMITS = ValidationLimits(min_examples=10)


def lines(*rows: str) -> bytes:
    return ("\n".join(rows) + "\n").encode()


def good(n: int) -> list[str]:
    return [GOOD] * n


def only_error(data: bytes) -> dict:
    outcome = validate_jsonl([data], LIMITS)
    assert not outcome.ok and outcome.error_count == 1, outcome.errors
    return outcome.errors[0]


GOLDEN = [
    # (case, file bytes, expected code, expected line, words the message must contain)
    ("invalid JSON line", lines(*good(2), '{"messages": [', *good(9)), "invalid_json", 3, "not valid JSON"),
    ("non-object line", lines(*good(4), "[1, 2, 3]", *good(7)), "not_an_object", 5, "array"),
    ("missing messages", lines(*good(1), json.dumps({"conversation": []}), *good(9)), "missing_messages", 2, "messages"),
    ("unknown role", lines(json.dumps({"messages": [{"role": "bot", "content": "hi"},
                                                   {"role": "assistant", "content": "x"}]}), *good(10)),
     "unrecognized_role", 1, "'bot'"),
    ("empty content", lines(*good(6), json.dumps({"messages": [{"role": "user", "content": ""},
                                                              {"role": "assistant", "content": "x"}]}), *good(4)),
     "missing_content", 7, "empty content"),
    ("no assistant message", lines(*good(9), json.dumps({"messages": [{"role": "user", "content": "hi"}]}), GOOD),
     "example_missing_assistant_message", 10, "no assistant message"),
    ("only weight-0 assistant", lines(chat_line("q", "a", weight=0), *good(10)),
     "example_missing_assistant_message", 1, "weight 1"),
    ("weight not 0 or 1", lines(*good(3), chat_line("q", "a", weight=0.5), *good(7)), "invalid_weight", 4, "0 or 1"),
    ("weight on a user message", lines(json.dumps({"messages": [{"role": "user", "content": "q", "weight": 1},
                                                                {"role": "assistant", "content": "a"}]}), *good(10)),
     "invalid_weight", 1, "only allowed on assistant"),
    ("unknown message key", lines(json.dumps({"messages": [{"role": "user", "content": "q", "mood": "x"},
                                                           {"role": "assistant", "content": "a"}]}), *good(10)),
     "message_unrecognized_key", 1, "'mood'"),
    ("bad tools", lines(json.dumps({"messages": json.loads(GOOD)["messages"], "tools": [{"type": "web"}]}), *good(10)),
     "invalid_tools", 1, "function"),
    ("tool result without id", lines(json.dumps({"messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                              "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "content": "42"}, {"role": "assistant", "content": "42"}]}), *good(10)),
     "missing_tool_call_id", 1, "tool_call_id"),
    ("image content", lines(json.dumps({"messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]},
        {"role": "assistant", "content": "a"}]}), *good(10)), "invalid_content", 1, "image_url"),
    ("fewer than 10 examples", lines(*good(9)), "too_few_examples", None, "9 examples"),
    ("bad UTF-8", b"\n".join([GOOD.encode()] * 2 + [b'{"messages": "\xff\xfe"}'] + [GOOD.encode()] * 9) + b"\n",
     "invalid_utf8", 3, "UTF-8"),
    ("empty file", b"", "empty_file", None, "empty"),
    ("whitespace only", b"\n  \n\n", "empty_file", None, "empty"),
    ("mixed formats", lines(*good(5), json.dumps({"prompt": "p", "completion": "c"}), *good(5)), "mixed_formats", 6,
     "prompt_completion"),
    ("preference without a preferred output", lines(*[json.dumps({
        "input": {"messages": [{"role": "user", "content": "q"}]},
        "preferred_output": [{"role": "assistant", "content": "good"}],
        "non_preferred_output": [{"role": "assistant", "content": "bad"}]})] * 3,
        json.dumps({"input": {"messages": [{"role": "user", "content": "q"}]},
                    "non_preferred_output": [{"role": "assistant", "content": "bad"}]}), *[""] * 0),
     "invalid_preferred_output", 4, "preferred_output"),
    ("prompt-completion with an empty completion", lines(*[json.dumps({"prompt": "p", "completion": "c"})] * 10,
                                                        json.dumps({"prompt": "p", "completion": " "})),
     "invalid_completion", 11, "non-empty"),
]


@pytest.mark.parametrize(("case", "data", "code", "line", "words"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_bad_files(case: str, data: bytes, code: str, line: int | None, words: str) -> None:
    error = only_error(data)
    assert error["code"] == code
    assert error["line"] == line
    assert words in error["message"]
    if line is not None:
        assert f"Line {line}" in error["message"]


def test_a_valid_chat_file_reports_its_format_and_size() -> None:
    rows = [*good(10), chat_line("q", "a", weight=1),
            json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [
                {"type": "text", "text": "multi"}, {"type": "text", "text": "part"}]},
                {"role": "assistant", "content": "x", "weight": 0}, {"role": "user", "content": "again"},
                {"role": "assistant", "content": "y"}], "parallel_tool_calls": False})]
    outcome = validate_jsonl([("\r\n".join(rows) + "\r\n").encode("utf-8-sig")], LIMITS)
    assert (outcome.ok, outcome.data_format, outcome.example_count, outcome.errors) == (True, "chat", 12, [])


def test_preference_and_prompt_completion_files_are_recognised() -> None:
    preference = json.dumps({"input": {"messages": [{"role": "user", "content": "q"}]},
                             "preferred_output": [{"role": "assistant", "content": "good"}],
                             "non_preferred_output": [{"role": "assistant", "content": "bad"}]})
    assert validate_jsonl([lines(*[preference] * 10)], LIMITS).data_format == "preference"
    prompt = json.dumps({"prompt": "2+2=", "completion": " 4"})
    assert validate_jsonl([lines(*[prompt] * 10)], LIMITS).data_format == "prompt_completion"


def test_errors_are_capped_but_counted_exactly() -> None:
    outcome = validate_jsonl([lines(*["nope"] * 250)], ValidationLimits(max_reported_errors=20))
    assert outcome.error_count == 250 and len(outcome.errors) == 20
    assert [e["line"] for e in outcome.errors] == list(range(1, 21))
    assert outcome.summary.startswith("250 errors found.")


def test_an_over_long_line_is_reported_without_being_buffered() -> None:
    huge = b"x" * 10_000
    chunks = [lines(*good(5)), huge, huge, b"\n", lines(*good(5))]
    outcome = validate_jsonl(chunks, ValidationLimits(max_line_bytes=4096))
    assert [(e["line"], e["code"]) for e in outcome.errors] == [(6, "line_too_long")]


def test_line_numbers_survive_arbitrary_chunk_boundaries() -> None:
    data = lines(*good(3), "[]", *good(8))
    for size in (1, 2, 7, 64):
        outcome = validate_jsonl([data[i:i + size] for i in range(0, len(data), size)], LIMITS)
        assert [(e["line"], e["code"]) for e in outcome.errors] == [(4, "not_an_object")]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_arbitrary_bytes_never_crash_the_validator(chunks: list[bytes]) -> None:
    outcome = validate_jsonl(chunks, LIMITS)
    total_lines = sum(1 for _ in iter_lines(chunks, LIMITS.max_line_bytes))
    assert outcome.ok is (outcome.error_count == 0)
    for error in outcome.errors:
        assert error["code"] and error["message"]
        assert error["line"] is None or 1 <= error["line"] <= total_lines


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["messages", "role", "content", "weight", "input", "prompt", "completion",
                                         "tools", "preferred_output", "non_preferred_output", "x"]), inner, max_size=4),
                    max_leaves=20))
def test_arbitrary_json_never_crashes_the_validator(value: object) -> None:
    outcome = validate_jsonl([lines(*[json.dumps(value)] * 10)], LIMITS)
    assert outcome.ok is (outcome.error_count == 0)


# ------------------------------------------------------------------------------------ reinforcement data
def rft_line(question: str, **fields: object) -> str:
    return json.dumps({"messages": [{"role": "system", "content": "Answer with a number."},
                                    {"role": "user", "content": question}], **fields})


def test_reinforcement_lines_end_before_the_answer_and_carry_item_fields() -> None:
    rows = [rft_line(f"{n} + 1?", answer=str(n + 1), meta={"n": n}) for n in range(12)]
    rows[4] = rft_line("5 + 1?", answer="6")  # no meta
    outcome = validate_jsonl([lines(*rows)], LIMITS)
    assert outcome.ok and outcome.data_format == "reinforcement" and outcome.example_count == 12
    assert outcome.item_fields == {"answer": None, "meta": 5}


def test_a_field_first_seen_late_was_missing_from_the_first_line() -> None:
    rows = [rft_line("q", answer="a") for _ in range(10)] + [rft_line("q", answer="a", rubric="r")]
    assert validate_jsonl([lines(*rows)], LIMITS).item_fields == {"answer": None, "rubric": 1}


def test_a_line_that_ends_with_the_answer_in_a_reinforcement_file_is_named() -> None:
    rows = [rft_line("q", answer="a") for _ in range(11)]
    rows[6] = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                          "answer": "a"})
    error = only_error(lines(*rows))
    assert (error["code"], error["line"]) == ("example_ends_with_answer", 7)
    assert "ends with an assistant message" in error["message"]


def test_a_chat_file_with_one_unanswered_line_reports_that_line() -> None:
    error = only_error(lines(*good(4), json.dumps({"messages": [{"role": "user", "content": "q"}]}), *good(6)))
    assert (error["code"], error["line"]) == ("example_missing_assistant_message", 5)


def test_a_chat_example_that_merely_ends_with_a_user_turn_stays_chat() -> None:
    row = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                                   {"role": "user", "content": "thanks"}]})
    outcome = validate_jsonl([lines(*[row] * 10)], LIMITS)
    assert outcome.ok and outcome.data_format == "chat"
