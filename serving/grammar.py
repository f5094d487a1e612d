"""Constrained decoding: tool calls and response formats the output is guaranteed to follow.

A chat request whose output must have a shape gets a grammar (Lark, with JSON Schema embedded through
llguidance's `%json{...}`):

* `response_format` `json_object` / `json_schema`: one JSON value valid against the schema;
* `tool_choice` `required`: one or more calls in the ftaas tool format (one, when `parallel_tool_calls` is
  false), each `<tool_call>{"name": <a tool>, "arguments": <valid against that tool's parameters>}</tool_call>`;
  a named `tool_choice`: exactly one call of that function;
* `tool_choice` `auto` with a response format: either of the two (a call, or the formatted answer).

`auto` alone is not constrained: the model may answer in text or call tools, and serving parses the calls it
writes (basemodels.conversations). JSON is written with fixed separators (`", "`, `": "`, as the training
data's `json.dumps` writes it) and no free whitespace, so a constrained model cannot wander into endless
blanks.

llguidance (https://github.com/guidance-ai/llguidance) computes each sequence's allowed tokens: it was chosen
over xgrammar (which pulls in triton) and outlines-core (slower mask computation on large vocabularies) for
its per-sequence matchers without a compile step per batch, which suits a continuous batch where each row
has its own grammar or none. Its cost per constrained row and step is in docs/serving.md.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import torch

from basemodels.conversations import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from contracts.errors import InvalidRequest
from contracts.inference.schemas import ChatCompletionRequest, NamedToolChoice

#: JSON written as `json.dumps` writes it (the ftaas tool format's training data), without free whitespace.
JSON_STYLE = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}


def _json(schema: dict[str, Any]) -> str:
    # llguidance reads its options from the schema's `x-guidance` key: ours replace any a request sent
    styled = {**schema, "x-guidance": JSON_STYLE}
    return "%json" + json.dumps(styled, ensure_ascii=False)


def _lark_string(text: str) -> str:
    return json.dumps(text)


def tool_call_schema(request: ChatCompletionRequest, only: str | None = None) -> dict[str, Any]:
    """The JSON Schema of one call's body: `{"name": <tool>, "arguments": <its parameters>}`, for the
    request's tools (or only the named one)."""
    options = [{"type": "object", "properties": {"name": {"const": tool.function.name},
                                                 "arguments": tool.function.parameters_schema},
                "required": ["name", "arguments"], "additionalProperties": False}
               for tool in request.tools or [] if only is None or tool.function.name == only]
    return options[0] if len(options) == 1 else {"anyOf": options}


def output_grammar(request: ChatCompletionRequest) -> tuple[str | None, str | None]:
    """(the Lark grammar the output must follow, or None; the grammar that checks the request's tool
    schemas compile, where the output is not constrained by them: `auto` without a response format).

    The second exists so that a tool whose parameters cannot be compiled is refused with a 400 whatever
    the tool choice, not only when the choice happens to constrain the output."""
    mode = request.tool_mode
    response = request.response_format.output_schema if request.response_format else None
    calls = None
    if mode != "none":
        only = request.tool_choice.function.name if isinstance(request.tool_choice, NamedToolChoice) else None
        call = f"call: {_lark_string(TOOL_CALL_OPEN)} {_json(tool_call_schema(request, only))} " \
               f"{_lark_string(TOOL_CALL_CLOSE)}\n"
        single = mode == "named" or request.parallel_tool_calls is False
        calls = ("calls: call\n" if single else 'calls: call ("\\n" call)*\n') + call
    if mode in ("required", "named"):
        return "start: calls\n" + (calls or ""), None
    if mode == "auto" and response is not None:
        return f"start: answer | calls\nanswer: {_json(response)}\n{calls}", None
    if response is not None:
        return f"start: {_json(response)}\n", None
    if mode == "auto":
        return None, "start: calls\n" + (calls or "")
    return None, None


class GrammarConstraint:
    """One sequence's grammar state: masks the logits of its next token, and follows the tokens chosen.

    Used by the engine thread only (serving.engine.TokenConstraint)."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        from llguidance.numpy import allocate_token_bitmask

        self.matcher = matcher
        self.vocab_size = vocab_size
        self._bitmask = allocate_token_bitmask(1, vocab_size)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` with every token the grammar does not allow next set to -inf (a new tensor)."""
        from llguidance.numpy import fill_next_token_bitmask

        fill_next_token_bitmask(self.matcher, self._bitmask, 0)
        bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")
        allowed = torch.from_numpy(bits[:logits.shape[-1]].astype(np.bool_))
        masked = torch.full_like(logits, float("-inf"))
        size = allowed.shape[0]
        masked[:size] = torch.where(allowed, logits[:size], masked[:size])
        return masked

    def copy(self) -> GrammarConstraint:
        """A fresh constraint in the same (unstarted) state, without compiling the grammar again."""
        return GrammarConstraint(self.matcher.deep_copy(), self.vocab_size)

    def advance(self, token_id: int) -> bool:
        """Follow the chosen token; True when the grammar is complete and allows nothing more (the sequence
        ends there, as at a stop token)."""
        self.matcher.consume_token(token_id)
        return bool(self.matcher.is_stopped() or self.matcher.is_error())


class GrammarCompiler:
    """Grammars for one base model's tokenizer (the tokenizer is wrapped once, on first use: ~0.3 s)."""

    def __init__(self, tokenizer: Any, stop_token_ids: frozenset[int], vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.stop_token_ids = sorted(stop_token_ids)
        self.vocab_size = vocab_size
        self._wrapped: Any = None
        self._lock = threading.Lock()

    def _llg_tokenizer(self) -> Any:
        with self._lock:
            if self._wrapped is None:
                import llguidance.hf

                self._wrapped = llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=self.vocab_size,
                                                             eos_token=self.stop_token_ids or None)
            return self._wrapped

    def check(self, grammar: str, *, param: str) -> None:
        """Raise a 400 (`invalid_schema`) naming what cannot be compiled."""
        from llguidance import LLMatcher

        failed, messages = LLMatcher.validate_grammar_with_warnings(
            LLMatcher.grammar_from_lark(grammar), self._llg_tokenizer())
        if failed:
            raise InvalidRequest(f"The JSON schema in '{param}' cannot be enforced: {'; '.join(messages)}",
                                 code="invalid_schema", param=param)

    def constraint(self, grammar: str, *, param: str) -> GrammarConstraint:
        """A fresh matcher for one sequence (a 400 where the grammar does not compile)."""
        from llguidance import LLMatcher

        matcher = LLMatcher(self._llg_tokenizer(), LLMatcher.grammar_from_lark(grammar), log_level=0)
        if matcher.is_error():
            raise InvalidRequest(f"The JSON schema in '{param}' cannot be enforced: {matcher.get_error()}",
                                 code="invalid_schema", param=param)
        return GrammarConstraint(matcher, self.vocab_size)


def grammar_param(request: ChatCompletionRequest) -> str:
    """The request field a grammar error is reported against."""
    return "tools" if request.tool_mode in ("required", "named") or not request.response_format else "response_format"
