"""From validated JSONL examples to token ids and labels, with the base model's own chat template.

Loss is taken only on assistant tokens whose message has weight 1 (the default). Each assistant span is
found by rendering the conversation prefix that ends just before the message (with the generation
prompt) and the prefix that ends with it: the characters between the two renderings are the message as
the template wrote it (content and end-of-turn marker). Token offsets then map characters to tokens.
This works for any template whose renderings extend each other, which chat templates do by design;
a template that does not is reported instead of silently training on the wrong tokens.

Over-long examples are truncated from the end (as the hosted API does) and counted, so the job can warn.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from basemodels.conversations import (
    legacy_to_tools,
    prepare_conversation,
    template_renders_names,
    template_renders_tools,
)
from contracts.errors import InvalidFile
from contracts.files.formats import CHAT, PREFERENCE, PROMPT_COMPLETION, REINFORCEMENT

IGNORE = -100


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    #: Same length as input_ids; IGNORE where the token is not trained on.
    labels: list[int]

    @property
    def trained_token_count(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


@dataclass(frozen=True)
class PreferenceExample:
    chosen: TokenizedExample
    rejected: TokenizedExample


@dataclass(frozen=True)
class SelfPlayPair:
    """SPIN: a training line's answer (chosen) against the model's own answer to its prompt (rejected), with
    their log probabilities under the model at the round's start (the reference)."""

    chosen: TokenizedExample
    rejected: TokenizedExample
    chosen_reference: float
    rejected_reference: float


@dataclass(frozen=True)
class PromptExample:
    """A reinforcement line: the prompt the model answers (its conversation rendered up to the generation
    prompt) and the whole line, which graders read as `item`."""

    prompt_ids: list[int]
    item: dict[str, Any]
    #: whether the line offers tools (samples are then parsed for tool calls: `sample.output_tools`)
    has_tools: bool = False

    @property
    def trained_token_count(self) -> int:
        return 1  # a prompt is always trainable: what is trained are the samples drawn from it


@dataclass
class EncodedDataset:
    examples: list[Any]
    truncated: int = 0
    #: Examples dropped because nothing trainable was left after truncation.
    dropped: int = 0
    warnings: list[str] = field(default_factory=list)


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def _normalise(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    normalised = []
    for message in messages:
        item = {k: v for k, v in message.items() if k != "weight"}
        item["content"] = _text(message.get("content"))
        normalised.append(item)
    return normalised


def _render(tokenizer: Any, messages: list[dict[str, Any]], tools: Any, *, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt
    )


def _label_spans(tokenizer: Any, text: str, spans: list[tuple[int, int]], max_len: int) -> tuple[TokenizedExample, bool]:
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids: list[int] = list(encoding["input_ids"])
    labels = [IGNORE] * len(input_ids)
    for index, (start, _end) in enumerate(encoding["offset_mapping"]):
        if any(span_start <= start < span_end for span_start, span_end in spans):
            labels[index] = input_ids[index]
    truncated = len(input_ids) > max_len
    return TokenizedExample(input_ids[:max_len], labels[:max_len]), truncated


@lru_cache(maxsize=16)
def _renders_tools(tokenizer: Any) -> bool:
    return template_renders_tools(tokenizer)


@lru_cache(maxsize=16)
def _renders_names(tokenizer: Any) -> bool:
    return template_renders_names(tokenizer)


def _conversation(tokenizer: Any, example: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    """The example's messages (weights kept) and tools, as the template can render them: tool calls and
    results in the ftaas tool format where the template does not render tools itself, participant names in
    the content where it ignores them (basemodels.conversations)."""
    tools = example.get("tools") or legacy_to_tools(example.get("functions"))
    return prepare_conversation(example["messages"], tools, native=_renders_tools(tokenizer),
                                names_native=_renders_names(tokenizer))


def encode_chat(tokenizer: Any, example: dict[str, Any], max_len: int) -> tuple[TokenizedExample, bool]:
    raw_messages, tools = _conversation(tokenizer, example)
    messages = _normalise(raw_messages)
    full = _render(tokenizer, messages, tools, generation_prompt=False)
    spans = []
    for index, message in enumerate(raw_messages):
        if message.get("role") != "assistant" or message.get("weight", 1) == 0:
            continue
        through = _render(tokenizer, messages[: index + 1], tools, generation_prompt=False)
        before = _prompt_before(tokenizer, messages, index, tools, through)
        if not through.startswith(before) or not full.startswith(through):
            raise InvalidFile(
                "the base model's chat template does not render conversations as prefixes of each other, "
                "so assistant tokens cannot be located", code="unsupported_chat_template", param="model")
        spans.append((len(before), len(through)))
    return _label_spans(tokenizer, full, spans, max_len)


def _prompt_before(tokenizer: Any, messages: list[dict[str, Any]], index: int, tools: Any, through: str) -> str:
    """The rendering of the conversation up to message `index`, ending with the generation prompt."""
    if index > 0:
        return _render(tokenizer, messages[:index], tools, generation_prompt=True)
    # A conversation that opens with the assistant: tokenizers refuse to render an empty conversation, so
    # learn the generation prompt from a probe and cut `through` just after its first occurrence.
    probe = [{"role": "user", "content": "probe"}]
    with_prompt = _render(tokenizer, probe, tools, generation_prompt=True)
    without = _render(tokenizer, probe, tools, generation_prompt=False)
    generation_prompt = with_prompt[len(without):] if with_prompt.startswith(without) else ""
    position = through.find(generation_prompt) if generation_prompt else -1
    return through[: position + len(generation_prompt)] if position >= 0 else ""


def encode_prompt_completion(tokenizer: Any, example: dict[str, Any], max_len: int) -> tuple[TokenizedExample, bool]:
    prompt_ids = tokenizer(example["prompt"], add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(example["completion"], add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        completion_ids = [*completion_ids, tokenizer.eos_token_id]
    input_ids = list(prompt_ids) + list(completion_ids)
    labels = [IGNORE] * len(prompt_ids) + list(completion_ids)
    truncated = len(input_ids) > max_len
    return TokenizedExample(input_ids[:max_len], labels[:max_len]), truncated


def encode_preference(tokenizer: Any, example: dict[str, Any], max_len: int) -> tuple[PreferenceExample, bool]:
    source = example["input"]
    encoded = []
    truncated = False
    for key in ("preferred_output", "non_preferred_output"):
        conversation, tools = _conversation(tokenizer, {**source, "messages": source["messages"] + example[key]})
        split = len(conversation) - len(example[key])  # tool-format rewriting maps replies one to one
        messages, reply = _normalise(conversation[:split]), _normalise(conversation[split:])
        prompt = _render(tokenizer, messages, tools, generation_prompt=True)
        full = _render(tokenizer, messages + reply, tools, generation_prompt=False)
        if not full.startswith(prompt):
            raise InvalidFile("the base model's chat template does not extend the prompt with the reply",
                              code="unsupported_chat_template", param="model")
        tokens, cut = _label_spans(tokenizer, full, [(len(prompt), len(full))], max_len)
        encoded.append(tokens)
        truncated = truncated or cut
    return PreferenceExample(chosen=encoded[0], rejected=encoded[1]), truncated


def encode_reinforcement(tokenizer: Any, example: dict[str, Any], max_len: int) -> tuple[PromptExample, bool]:
    """The prompt of a reinforcement line; one longer than `max_len` - 1 keeps its end (the question), so
    that the model has room for at least one token of answer."""
    raw_messages, tools = _conversation(tokenizer, example)
    prompt = _render(tokenizer, _normalise(raw_messages), tools, generation_prompt=True)
    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    keep = max(1, max_len - 1)
    return PromptExample(ids[-keep:], example, has_tools=bool(tools)), len(ids) > keep


ENCODERS = {CHAT: encode_chat, PROMPT_COMPLETION: encode_prompt_completion, PREFERENCE: encode_preference,
            REINFORCEMENT: encode_reinforcement}


def encode_lines(lines: Iterable[str], data_format: str, tokenizer: Any, max_len: int) -> EncodedDataset:
    """Encode every non-blank line of a validated file."""
    encoder = ENCODERS[data_format]
    dataset = EncodedDataset(examples=[])
    for line in lines:
        if not line.strip():
            continue
        encoded, truncated = encoder(tokenizer, json.loads(line), max_len)
        trainable = (
            min(encoded.chosen.trained_token_count, encoded.rejected.trained_token_count)
            if isinstance(encoded, PreferenceExample) else encoded.trained_token_count
        )
        if truncated:
            dataset.truncated += 1
        if trainable == 0:
            dataset.dropped += 1
            continue
        dataset.examples.append(encoded)
    if dataset.truncated:
        dataset.warnings.append(
            f"{dataset.truncated} example(s) exceeded {max_len} tokens and were truncated from the end.")
    if dataset.dropped:
        dataset.warnings.append(
            f"{dataset.dropped} example(s) had no trainable tokens left after truncation and were skipped.")
    return dataset


class TokenCount:
    """What one epoch of a job on this tokenizer's model would see of a validated file, nothing truncated, fed
    line by line (so that one pass over a file counts it under several tokenizers): `examples`, `tokens` (every
    token of every encoded sequence: a preference line's two), `trained_tokens` (those the loss is taken on:
    assistant tokens; a preference line's preferred reply; None for reinforcement data, whose trained tokens are
    the samples drawn during the job) and `longest_example` (the most tokens of one sequence: compare with the
    job's `max_seq_len`)."""

    def __init__(self, data_format: str, tokenizer: Any) -> None:
        self.data_format, self.tokenizer = data_format, tokenizer
        self.encoder = ENCODERS[data_format]
        self.examples = self.tokens = self.trained = self.longest = 0

    def add(self, line: str) -> None:
        if not line.strip():
            return
        encoded, _ = self.encoder(self.tokenizer, json.loads(line), 1 << 30)
        if isinstance(encoded, PreferenceExample):
            sequences = [encoded.chosen.input_ids, encoded.rejected.input_ids]
            self.trained += encoded.chosen.trained_token_count
        elif isinstance(encoded, PromptExample):
            sequences = [encoded.prompt_ids]
        else:
            sequences = [encoded.input_ids]
            self.trained += encoded.trained_token_count
        self.examples += 1
        self.tokens += sum(len(sequence) for sequence in sequences)
        self.longest = max([self.longest, *(len(sequence) for sequence in sequences)])

    def result(self) -> dict[str, int | None]:
        return {"examples": self.examples, "tokens": self.tokens,
                "trained_tokens": None if self.data_format == REINFORCEMENT else self.trained,
                "longest_example": self.longest}


def count_tokens(lines: Iterable[str], data_format: str, tokenizer: Any) -> dict[str, int | None]:
    """`TokenCount` of every line."""
    count = TokenCount(data_format, tokenizer)
    for line in lines:
        count.add(line)
    return count.result()
