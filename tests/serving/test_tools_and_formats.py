"""Function calling and structured outputs, through the official SDK against a live server.

The demo model is random, so what it would write freely is noise: these tests show what constrained
decoding guarantees whatever the model (a `required` or named tool choice always gives valid calls; a
response format always gives JSON valid against its schema) and what the wire looks like. That a trained
model calls the right tool of itself is tests/e2e/test_function_calling.py's claim, on the real model.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel

from contracts.settings import DEMO_BASE_MODEL
from tests.serving.conftest import LiveServing

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 12}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
ORDER = {"type": "function", "function": {
    "name": "lookup_order", "description": "An order's status.",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "integer", "minimum": 0, "maximum": 9999}},
                   "required": ["order_id"], "additionalProperties": False}}}
TOOLS = [WEATHER, ORDER]
SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris, and where is order 42?"}]


def _check_calls(calls: Any, *, allowed: set[str]) -> None:
    assert calls, "no tool calls"
    ids = [call.id for call in calls]
    assert len(set(ids)) == len(ids) and all(i.startswith("call_") for i in ids)
    for call in calls:
        assert call.type == "function" and call.function.name in allowed
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_required_and_named_tool_choices_always_give_valid_calls(start_serving) -> None:
    served: LiveServing = start_serving()
    client = served.client()
    required = client.chat.completions.create(model=DEMO_BASE_MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                              n=4, seed=1, max_tokens=120)
    for choice in required.choices:
        # parallel calls: a random model may go on calling until max_tokens (the cut call stays content)
        assert choice.finish_reason in ("tool_calls", "length"), choice
        assert choice.message.content is None or choice.finish_reason == "length"
        _check_calls(choice.message.tool_calls, allowed={"get_weather", "lookup_order"})

    named = client.chat.completions.create(
        model=DEMO_BASE_MODEL, messages=ASK, tools=TOOLS, n=4, seed=2, max_tokens=120,
        tool_choice={"type": "function", "function": {"name": "lookup_order"}})
    for choice in named.choices:
        assert choice.finish_reason == "tool_calls"
        assert len(choice.message.tool_calls) == 1  # a named choice is one call of that function, as OpenAI's
        _check_calls(choice.message.tool_calls, allowed={"lookup_order"})

    single = client.chat.completions.create(model=DEMO_BASE_MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                            parallel_tool_calls=False, n=4, seed=3, max_tokens=120)
    for choice in single.choices:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        assert len(choice.message.tool_calls) == 1

    legacy = client.chat.completions.create(model=DEMO_BASE_MODEL, messages=ASK, max_tokens=120, seed=4,
                                            functions=[ORDER["function"]], function_call={"name": "lookup_order"})
    _check_calls(legacy.choices[0].message.tool_calls, allowed={"lookup_order"})


def test_streamed_tool_calls_assemble_in_the_sdk_to_the_same_calls(start_serving) -> None:
    served: LiveServing = start_serving()
    client = served.client()
    options: dict[str, Any] = {"model": DEMO_BASE_MODEL, "messages": ASK, "tools": TOOLS, "tool_choice": "required",
                               "parallel_tool_calls": False, "seed": 7, "max_tokens": 160}
    whole = client.chat.completions.create(**options).choices[0]
    with client.chat.completions.stream(**options) as stream:
        chunks = [event.chunk for event in stream if event.type == "chunk"]
        streamed = stream.get_final_completion().choices[0]
    assert any(choice.delta.tool_calls for chunk in chunks for choice in chunk.choices)
    assert streamed.finish_reason == whole.finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in streamed.message.tool_calls] == \
        [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]
    _check_calls(streamed.message.tool_calls, allowed={"get_weather", "lookup_order"})


class Forecast(BaseModel):
    city: Literal["Paris", "Oslo", "Lima"]
    rain: bool
    level: Literal["low", "high"]


def test_response_formats_always_parse_and_validate(start_serving) -> None:
    served: LiveServing = start_serving()
    client = served.client()
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                               "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}},
              "required": ["ok", "tags"], "additionalProperties": False}
    formatted = client.chat.completions.create(
        model=DEMO_BASE_MODEL, messages=ASK, n=4, seed=5, max_tokens=80,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}})
    for choice in formatted.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), schema)

    parsed = client.chat.completions.parse(model=DEMO_BASE_MODEL, messages=ASK, response_format=Forecast, seed=6,
                                           max_tokens=80)
    assert isinstance(parsed.choices[0].message.parsed, Forecast)
    beta = client.beta.chat.completions.parse(model=DEMO_BASE_MODEL, messages=ASK, response_format=Forecast, seed=6,
                                              max_tokens=80)
    assert beta.choices[0].message.parsed == parsed.choices[0].message.parsed

    # json_object: any JSON object (a random model's strings run long; the cut-off ones are finish=length)
    objects = client.chat.completions.create(model=DEMO_BASE_MODEL, messages=ASK, n=4, seed=8, max_tokens=200,
                                             response_format={"type": "json_object"})
    finished = [c for c in objects.choices if c.finish_reason == "stop"]
    for choice in finished:
        assert isinstance(json.loads(choice.message.content), dict)
    for choice in objects.choices:
        assert choice.message.content.startswith("{")


def test_a_conversation_with_tool_results_is_rendered_and_answered(start_serving) -> None:
    served: LiveServing = start_serving()
    client = served.client()
    messages = [*ASK,
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_a", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
                {"role": "tool", "tool_call_id": "call_a", "content": '{"temperature": 21}'}]
    reply = client.chat.completions.create(model=DEMO_BASE_MODEL, messages=messages, tools=TOOLS, max_tokens=8,
                                           temperature=0)
    assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")
    prompt = served.inference.engine_for(DEMO_BASE_MODEL)
    from contracts.inference.schemas import ChatCompletionRequest

    request = ChatCompletionRequest(model=DEMO_BASE_MODEL, messages=messages, tools=TOOLS)
    text = prompt.tokenizer.decode(served.inference._prompts(prompt, request)[0])
    assert '"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}' in text
    assert json.dumps({"name": "get_weather", "content": '{"temperature": 21}'}) in text  # the result, named
    assert "<tools>" in text and "lookup_order" in text


def test_unconstrained_rows_are_unchanged_by_constrained_rows_in_the_same_batch(start_serving) -> None:
    from concurrent.futures import ThreadPoolExecutor

    served: LiveServing = start_serving(serving_batch_invariant=True)
    client = served.client()
    plain = {"model": DEMO_BASE_MODEL, "messages": ASK, "max_tokens": 24, "temperature": 0, "n": 2}
    alone = client.chat.completions.create(**plain)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client.chat.completions.create, model=DEMO_BASE_MODEL, messages=ASK, tools=TOOLS,
                               tool_choice="required", max_tokens=100, seed=i) for i in range(3)]
        mixed = pool.submit(client.chat.completions.create, **plain)
        for future in futures:
            _check_calls(future.result().choices[0].message.tool_calls, allowed={"get_weather", "lookup_order"})
    assert [c.message.content for c in mixed.result().choices] == [c.message.content for c in alone.choices]


@pytest.mark.parametrize(("options", "param", "fragment"), [
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools", "pattern"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools", "name"),
    ({"tools": [{"type": "retrieval"}]}, "tools", "function"),
    ({"tools": [WEATHER, WEATHER]}, None, "unique"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "send_email"}}}, None, "send_email"),
    ({"tool_choice": "required"}, None, "only allowed when 'tools'"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", ""),
    ({"response_format": {"type": "xml"}}, "response_format", ""),
    ({"response_format": {"type": "json_schema"}}, None, "needs a 'json_schema'"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "array", "uniqueItems": True}}}}, "response_format", "uniqueItems"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "nonsense", "x-guidance": 5}}}}, "response_format", "nonsense"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}}]}, "tools", "missing"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}}], "tool_choice": "required"},
     "tools", "missing"),
])
def test_bad_tools_and_formats_are_clear_400s(start_serving, options: dict[str, Any], param: str | None,
                                             fragment: str) -> None:
    served: LiveServing = start_serving()
    with pytest.raises(openai.BadRequestError) as caught:
        served.client().chat.completions.create(model=DEMO_BASE_MODEL, messages=ASK, max_tokens=4, **options)
    error = caught.value.body
    assert isinstance(error, dict), error
    assert fragment in error["message"], error
    if param is not None:
        assert (error.get("param") or "").startswith(param), error


def test_participant_names_reach_the_model_when_its_template_ignores_them(start_serving) -> None:
    """OpenAI's `name` on user, system and assistant messages: the demo model's template has no place for it,
    so it is written into the content ("Alice: ...") rather than dropped; a template that renders names gets
    the field as it is."""
    from basemodels.conversations import prepare_conversation, template_renders_names
    from contracts.inference.schemas import ChatCompletionRequest

    served: LiveServing = start_serving()
    messages = [{"role": "system", "content": "Moderate the chat.", "name": "rules"},
                {"role": "user", "content": "Who won?", "name": "Alice"},
                {"role": "assistant", "content": "Bob did.", "name": "referee"},
                {"role": "user", "content": "Thanks", "name": "Carol"}]
    reply = served.client().chat.completions.create(model=DEMO_BASE_MODEL, messages=messages, max_tokens=4,
                                                    temperature=0)
    assert reply.choices[0].message.role == "assistant"
    engine = served.inference.engine_for(DEMO_BASE_MODEL)
    assert not template_renders_names(engine.tokenizer)
    request = ChatCompletionRequest(model=DEMO_BASE_MODEL, messages=messages)
    text = engine.tokenizer.decode(served.inference._prompts(engine, request)[0])
    for line in ("rules: Moderate the chat.", "Alice: Who won?", "referee: Bob did.", "Carol: Thanks"):
        assert line in text
    kept, _ = prepare_conversation(messages, None, native=True, names_native=True)
    assert [m.get("name") for m in kept] == ["rules", "Alice", "referee", "Carol"]
