"""Tool calls survive training: every assistant turn's tool calls are in its trained tokens, rendered by the
base model's template where it renders tools and in the ftaas tool format where it does not (the demo
model's ChatML, like SmolLM2's, renders neither); `weight: 0` turns are not trained; legacy `functions` too."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from basemodels.conversations import prepare_conversation, template_renders_tools
from worker.training.data import IGNORE, encode_chat, encode_lines, encode_preference

#: A template that renders tools and tool calls itself (Qwen 2.5's scheme, abridged).
NATIVE_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n{% if messages[0].role == 'system' %}{{ messages[0].content }}\n{% endif %}"
    "# Tools\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools><|im_end|>\n"
    "{%- elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}<|im_start|>assistant\n{{ message.content or '' }}"
    "{%- for call in message.tool_calls or [] %}\n<tool_call>\n{\"name\": \"{{ call.function.name }}\", "
    "\"arguments\": {{ call.function.arguments }}}\n</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response>"
    "<|im_end|>\n"
    "{%- elif message.role != 'system' %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}")

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}},
         {"type": "function", "function": {"name": "lookup_order", "description": "An order's status",
                                            "parameters": {"type": "object",
                                                           "properties": {"order_id": {"type": "string"}}}}}]


def _call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


EXAMPLE = {"tools": TOOLS, "messages": [
    {"role": "system", "content": "You help travellers."},
    {"role": "user", "content": "Weather in Oslo and Lima, and where is order A-17?"},
    {"role": "assistant", "content": None, "tool_calls": [  # parallel calls
        _call("c1", "get_weather", {"city": "Oslo"}), _call("c2", "get_weather", {"city": "Lima"}),
        _call("c3", "lookup_order", {"order_id": "A-17"})]},
    {"role": "tool", "tool_call_id": "c1", "content": "snow, -4"},
    {"role": "tool", "tool_call_id": "c2", "content": "sunny, 24"},
    {"role": "tool", "tool_call_id": "c3", "content": "shipped"},
    {"role": "assistant", "content": "Oslo: snow. Lima: sunny. A-17 has shipped."},
    {"role": "user", "content": "And Quito?"},
    {"role": "assistant", "weight": 0, "tool_calls": [_call("c4", "get_weather", {"city": "Quito"})]},
    {"role": "tool", "tool_call_id": "c4", "content": "rain"},
    {"role": "assistant", "content": "Quito: rain."},
]}


@pytest.fixture(params=["ftaas format (ChatML)", "native template"])
def chat_tokenizer(request: pytest.FixtureRequest, tokenizer: Any) -> Any:
    chosen = copy.deepcopy(tokenizer)
    if request.param == "native template":
        chosen.chat_template = NATIVE_TEMPLATE
    return chosen


def _trained_text(tokenizer: Any, example: dict[str, Any]) -> str:
    encoded, _ = encode_chat(tokenizer, example, 4096)
    return tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE])


def test_every_trained_tool_call_is_in_the_trained_tokens(chat_tokenizer: Any) -> None:
    assert template_renders_tools(chat_tokenizer) == (chat_tokenizer.chat_template == NATIVE_TEMPLATE)
    trained = _trained_text(chat_tokenizer, EXAMPLE)
    for city in ("Oslo", "Lima"):
        assert f'"city": "{city}"' in trained
    assert trained.count("get_weather") == 2 and '"order_id": "A-17"' in trained
    assert "Oslo: snow. Lima: sunny. A-17 has shipped." in trained and "Quito: rain." in trained
    assert "Quito" not in trained.replace("Quito: rain.", "")  # the weight-0 call is context, not trained
    # tool results and the tools themselves are context too
    assert "snow, -4" not in trained and "Weather in a city" not in trained


def test_without_native_support_the_tools_are_presented_in_the_system_turn(tokenizer: Any) -> None:
    messages, tools = prepare_conversation(EXAMPLE["messages"], TOOLS, native=False)
    assert tools is None and messages[0]["role"] == "system"
    assert messages[0]["content"].startswith("You help travellers.") and '"name": "lookup_order"' in messages[0]["content"]
    assert messages[2]["content"].count("<tool_call>") == 3 and messages[3]["role"] == "user"
    assert json.loads(messages[3]["content"].split("\n")[1]) == {"name": "get_weather", "content": "snow, -4"}
    assert messages[8]["weight"] == 0  # weights survive the rewriting
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert '<tool_call>{"name": "lookup_order", "arguments": {"order_id": "A-17"}}</tool_call>' in rendered


def test_legacy_functions_train_like_tools(tokenizer: Any) -> None:
    legacy = {"functions": [TOOLS[0]["function"]], "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
        {"role": "function", "name": "get_weather", "content": "snow"},
        {"role": "assistant", "content": "Snow in Oslo."}]}
    trained = _trained_text(tokenizer, legacy)
    assert '{"name": "get_weather", "arguments": {"city": "Oslo"}}' in trained and "Snow in Oslo." in trained


def test_a_preferred_tool_call_is_in_the_chosen_tokens(tokenizer: Any) -> None:
    example = {"input": {"tools": TOOLS, "messages": [{"role": "user", "content": "Weather in Oslo?"}]},
               "preferred_output": [{"role": "assistant", "tool_calls": [_call("c1", "get_weather", {"city": "Oslo"})]}],
               "non_preferred_output": [{"role": "assistant", "content": "I cannot know."}]}
    pair, _ = encode_preference(tokenizer, example, 4096)
    chosen = tokenizer.decode([t for t, label in zip(pair.chosen.input_ids, pair.chosen.labels, strict=True)
                               if label != IGNORE])
    assert '"arguments": {"city": "Oslo"}' in chosen
    assert "lookup_order" in tokenizer.decode(pair.chosen.input_ids)  # the tools are in the prompt


def test_a_tool_result_without_a_matching_call_keeps_its_name_and_content() -> None:
    messages, _ = prepare_conversation([{"role": "user", "content": "hi"},
                                        {"role": "tool", "tool_call_id": "elsewhere", "name": "clock",
                                         "content": "12:00"}], None, native=False)
    assert json.loads(messages[1]["content"].split("\n")[1]) == {"name": "clock", "content": "12:00"}


def test_participant_names_in_training_data_are_trained_on_not_dropped(tokenizer: Any) -> None:
    """A chat line whose messages carry OpenAI's `name`: the demo template ignores names, so they are written
    into the content the model sees, the assistant's as part of the reply it learns."""
    line = json.dumps({"messages": [{"role": "user", "content": "Who won?", "name": "Alice"},
                                    {"role": "assistant", "content": "Bob did.", "name": "referee"}]})
    example = encode_lines([line], "chat", tokenizer, 256).examples[0]
    text = tokenizer.decode(example.input_ids)
    assert "Alice: Who won?" in text and "referee: Bob did." in text
    trained = tokenizer.decode([t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE])
    assert "referee: Bob did." in trained and "Alice" not in trained
