"""The ftaas tool format parses back into OpenAI-shaped tool calls: what training taught the model to write
(basemodels.conversations) is what serving reads; a block that is not a call stays in the text, whole."""

from __future__ import annotations

import json

from basemodels.conversations import format_tool_call, parse_tool_calls


def test_calls_written_as_trained_parse_back_with_their_arguments() -> None:
    text = "\n".join([format_tool_call("get_weather", '{"city": "Oslo"}'),
                      format_tool_call("lookup_order", '{"order_id": "A-17", "items": [1, 2]}')])
    content, calls = parse_tool_calls(text)
    assert content is None
    assert [c["function"]["name"] for c in calls] == ["get_weather", "lookup_order"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Oslo"},
                                                                       {"order_id": "A-17", "items": [1, 2]}]
    assert [c["id"] for c in calls] == ["call_0", "call_1"] and all(c["type"] == "function" for c in calls)


def test_text_around_calls_is_the_content_and_text_without_calls_is_untouched() -> None:
    content, calls = parse_tool_calls('Let me check.\n<tool_call>{"name": "f", "arguments": {}}</tool_call>')
    assert content == "Let me check." and calls[0]["function"] == {"name": "f", "arguments": "{}"}
    assert parse_tool_calls("It is sunny in Oslo.") == ("It is sunny in Oslo.", [])


def test_a_block_that_is_not_a_call_stays_in_the_text() -> None:
    text = 'See <tool_call>not json</tool_call> and <tool_call>{"name": "f", "arguments": "raw"}</tool_call>'
    content, calls = parse_tool_calls(text)
    assert content == "See <tool_call>not json</tool_call> and"
    assert calls == [{"id": "call_0", "type": "function", "function": {"name": "f", "arguments": "raw"}}]
    unterminated = 'Calling <tool_call>{"name": "f"'
    assert parse_tool_calls(unterminated) == (unterminated, [])
