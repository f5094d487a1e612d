"""Does a copy behave like its original? Two models' answers to the same held-out prompts, compared item by
item and summarised with Wilson intervals (evals.report.wilson).

Per item:

* `exact`: the answers agree: the same text once whitespace is collapsed and the ends stripped, and the same
  tool calls (names, and arguments compared as parsed JSON) where either answer calls tools;
* `similarity`: rapidfuzz's normalised Indel similarity (0-1) of the two texts (of the tool calls'
  canonical JSON where either answer calls tools);
* `tool_calls` (only where either answer calls tools): whether the called names agree, and the arguments;
* `json` (only where the request asked for `response_format` json_object / json_schema): whether each answer
  is a JSON object that satisfies the schema asked for (jsonschema);
* `judge` (with a judge): which answer the judge prefers, asked with the two answers in an order drawn per
  item (so a judge's position bias does not favour either model), or a tie.

The summary gives each rate with its interval; `agreement` is the exact agreement, the headline figure.

A comparison also runs on the server as a knowledge eval of kind "comparison" (`ComparisonSpec`): the
candidate is a model of the project, the original's answers come from a reference file (chat JSONL, each
line ending with the original's answer, as `ftaas transfer compare` writes it) or from a reference model the
server answers with. Its report is `{"object": "comparison_report", "models", "summary", ...}` and its items
the per-item records.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from contracts.errors import InvalidRequest
from contracts.files.chat_lines import ChatLineError, chat_requests
from evals.report import wilson

KIND = "comparison"
REPORT_OBJECT = "comparison_report"
#: At most this many held-out prompts in one server-side comparison (each is one or two generations).
MAX_ITEMS = 5000

SIMILAR = 0.8  # a similarity at or above this counts as "similar" in the summary

JUDGE_SYSTEM = ("You compare two answers to the same request. Reply with exactly one of: A, B, TIE. A or B when "
                "that answer is clearly better (more correct, more complete, follows the request); TIE when they "
                "are equally good or say the same.")


@dataclass(frozen=True)
class ModelAnswer:
    content: str | None
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None

    @classmethod
    def of(cls, answer: dict[str, Any]) -> ModelAnswer:
        return cls(answer.get("content"), answer.get("tool_calls") or None, answer.get("finish_reason"))


def _text(value: str | None) -> str:
    return re.sub(r"\s+", " ", value or "").strip()


def _calls(calls: list[dict[str, Any]] | None) -> list[tuple[str | None, Any]]:
    out: list[tuple[str | None, Any]] = []
    for call in calls or []:
        function = call.get("function") or {}
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except ValueError:
            arguments = function.get("arguments")
        out.append((function.get("name"), arguments))
    return out


def _json_valid(content: str | None, response_format: dict[str, Any]) -> bool:
    try:
        value = json.loads(content or "")
    except ValueError:
        return False
    schema = (response_format.get("json_schema") or {}).get("schema") if response_format.get("type") == "json_schema" \
        else None
    if schema is None:
        return isinstance(value, dict)
    from jsonschema import Draft202012Validator

    return not any(Draft202012Validator(schema).iter_errors(value))


def compare_item(request: dict[str, Any], reference: ModelAnswer, candidate: ModelAnswer) -> dict[str, Any]:
    """The per-item record (without the judge's verdict): see the module docstring."""
    from rapidfuzz.distance import Indel

    ref_calls, cand_calls = _calls(reference.tool_calls), _calls(candidate.tool_calls)
    record: dict[str, Any] = {}
    if ref_calls or cand_calls:
        names = [name for name, _ in ref_calls] == [name for name, _ in cand_calls]
        record["tool_calls"] = {"names_agree": names, "arguments_agree": names and ref_calls == cand_calls}
        left = json.dumps(ref_calls, sort_keys=True)
        right = json.dumps(cand_calls, sort_keys=True)
        record["exact"] = ref_calls == cand_calls and _text(reference.content) == _text(candidate.content)
    else:
        left, right = _text(reference.content), _text(candidate.content)
        record["exact"] = left == right
    record["similarity"] = round(Indel.normalized_similarity(left, right), 6)
    response_format = request.get("response_format") or {}
    if response_format.get("type") in ("json_object", "json_schema"):
        record["json"] = {"reference_valid": _json_valid(reference.content, response_format),
                          "candidate_valid": _json_valid(candidate.content, response_format)}
    return record


def judge_prompts(requests: Sequence[dict[str, Any]], references: Sequence[ModelAnswer],
                  candidates: Sequence[ModelAnswer], *, seed: int = 0) -> tuple[list[tuple[str, str]], list[bool]]:
    """(system, user) prompts for a judge, and per item whether the candidate is shown as A."""
    order = random.Random(seed)
    prompts, candidate_first = [], []
    for request, reference, candidate in zip(requests, references, candidates, strict=True):
        first = order.random() < 0.5
        a, b = (candidate, reference) if first else (reference, candidate)
        conversation = "\n".join(f"{m.get('role')}: {m.get('content')}" for m in request["messages"])

        def shown(answer: ModelAnswer) -> str:
            calls = f"\n(tool calls: {json.dumps(_calls(answer.tool_calls))})" if answer.tool_calls else ""
            return (answer.content or "") + calls

        user = (f"Request:\n{conversation}\n\nAnswer A:\n{shown(a)}\n\nAnswer B:\n{shown(b)}\n\n"
                "Which is better? Reply A, B or TIE.")
        prompts.append((JUDGE_SYSTEM, user))
        candidate_first.append(first)
    return prompts, candidate_first


def verdict(reply: str, candidate_first: bool) -> str | None:
    """'candidate', 'reference', 'tie', or None for a reply that is none of A, B, TIE."""
    word = reply.strip().upper().split()[0].strip(".:*") if reply.strip() else ""
    if word == "TIE":
        return "tie"
    if word in ("A", "B"):
        return "candidate" if (word == "A") == candidate_first else "reference"
    return None


def _rate(hits: int, n: int, level: float) -> dict[str, Any]:
    block: dict[str, Any] = {"n": n, "count": hits, "rate": round(hits / n, 6) if n else None}
    if n:
        low, high = wilson(hits, n, level)
        block["ci_low"], block["ci_high"] = round(low, 6), round(high, 6)
    return block


def summarize(records: Sequence[dict[str, Any]], *, level: float = 0.95) -> dict[str, Any]:
    """The headline figures of per-item records (each may carry `judge`: candidate/reference/tie/None)."""
    n = len(records)
    summary: dict[str, Any] = {"items": n, "confidence_level": level,
                               "agreement": _rate(sum(r["exact"] for r in records), n, level),
                               "similar": _rate(sum(r["similarity"] >= SIMILAR for r in records), n, level) | {
                                   "threshold": SIMILAR},
                               "mean_similarity": round(sum(r["similarity"] for r in records) / n, 6) if n else None}
    tools = [r["tool_calls"] for r in records if "tool_calls" in r]
    if tools:
        summary["tool_calls"] = {"names": _rate(sum(t["names_agree"] for t in tools), len(tools), level),
                                 "arguments": _rate(sum(t["arguments_agree"] for t in tools), len(tools), level)}
    formats = [r["json"] for r in records if "json" in r]
    if formats:
        summary["json_validity"] = {
            "reference": _rate(sum(f["reference_valid"] for f in formats), len(formats), level),
            "candidate": _rate(sum(f["candidate_valid"] for f in formats), len(formats), level)}
    verdicts = [r["judge"] for r in records if r.get("judge") is not None]
    if verdicts:
        judged = len(verdicts)
        summary["judge"] = {
            "candidate_preferred": _rate(verdicts.count("candidate"), judged, level),
            "reference_preferred": _rate(verdicts.count("reference"), judged, level),
            "tie": _rate(verdicts.count("tie"), judged, level),
            #: the copy is at least as good as the original (a tie or the copy preferred)
            "candidate_at_least_as_good": _rate(judged - verdicts.count("reference"), judged, level),
            "unparsed": sum(r.get("judge") is None for r in records if "judge" in r)}
    return summary


def compare(requests: Sequence[dict[str, Any]], references: Sequence[dict[str, Any]],
            candidates: Sequence[dict[str, Any]], *,
            judge: Callable[[list[tuple[str, str]]], list[str]] | None = None, level: float = 0.95,
            seed: int = 0) -> dict[str, Any]:
    """The whole report: `{"summary", "items"}`; `judge`, when given, answers a list of (system, user) prompts."""
    refs = [ModelAnswer.of(a) for a in references]
    cands = [ModelAnswer.of(a) for a in candidates]
    records = []
    for index, (request, reference, candidate) in enumerate(zip(requests, refs, cands, strict=True)):
        record = {"index": index, "messages": request["messages"], "reference": reference.__dict__,
                  "candidate": candidate.__dict__, **compare_item(request, reference, candidate)}
        records.append(record)
    if judge is not None and records:
        prompts, candidate_first = judge_prompts(requests, refs, cands, seed=seed)
        for record, reply, first in zip(records, judge(prompts), candidate_first, strict=True):
            record["judge"] = verdict(reply, first)
            record["judge_reply"] = reply[:200]
    return {"summary": summarize(records, level=level), "items": records}


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary as aligned text rows (for a terminal or a log)."""
    lines = [f"{summary['items']} items, {summary['confidence_level']:.0%} Wilson intervals"]

    def row(name: str, block: dict[str, Any]) -> None:
        if block.get("rate") is None:
            lines.append(f"{name:<34} n/a")
            return
        lines.append(f"{name:<34} {block['rate']:.3f}  [{block['ci_low']:.3f}, {block['ci_high']:.3f}]  "
                     f"({block['count']}/{block['n']})")

    row("agreement (exact)", summary["agreement"])
    row(f"similar (>= {summary['similar']['threshold']})", summary["similar"])
    lines.append(f"{'mean similarity':<34} {summary['mean_similarity']}")
    if "tool_calls" in summary:
        row("tool call names agree", summary["tool_calls"]["names"])
        row("tool call arguments agree", summary["tool_calls"]["arguments"])
    if "json_validity" in summary:
        row("valid JSON: original", summary["json_validity"]["reference"])
        row("valid JSON: copy", summary["json_validity"]["candidate"])
    if "judge" in summary:
        row("judge prefers the copy", summary["judge"]["candidate_preferred"])
        row("judge prefers the original", summary["judge"]["reference_preferred"])
        row("copy at least as good", summary["judge"]["candidate_at_least_as_good"])
    return lines


def headline(summary: dict[str, Any]) -> str:
    """One line of the figures a person looks at first (a job's event)."""
    def rate(block: dict[str, Any]) -> str:
        if block.get("rate") is None:
            return "n/a"
        return f"{block['rate']:.3f} [{block['ci_low']:.3f}, {block['ci_high']:.3f}] ({block['count']}/{block['n']})"

    parts = [f"exact agreement {rate(summary['agreement'])}", f"mean similarity {summary['mean_similarity']}"]
    if "tool_calls" in summary:
        parts.append(f"tool calls: names {rate(summary['tool_calls']['names'])}, "
                     f"arguments {rate(summary['tool_calls']['arguments'])}")
    if "json_validity" in summary:
        parts.append(f"valid JSON: original {rate(summary['json_validity']['reference'])}, "
                     f"copy {rate(summary['json_validity']['candidate'])}")
    if "judge" in summary:
        parts.append(f"judge: copy at least as good {rate(summary['judge']['candidate_at_least_as_good'])}")
    return "; ".join(parts)


def reference_line(request: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """One line of a reference file: the request's messages, then the original's answer as the last
    assistant turn (tool calls kept), with the request's tools and response_format."""
    from contracts.files.chat_lines import training_line

    line = training_line(request, answer)
    for key in ("response_format", "tool_choice"):
        if request.get(key) is not None:
            line[key] = request[key]
    return line


@dataclass(frozen=True)
class ReferenceItem:
    request: dict[str, Any]
    #: The original's answer (content, tool_calls), None where a reference model answers at run time.
    answer: dict[str, Any] | None


def reference_items(content: bytes, *, with_answers: bool, param: str) -> list[ReferenceItem]:
    """The held-out items of a reference file. With `with_answers` each line must end with the original's
    answer (an assistant turn); without, a line's trailing assistant turn is ignored and a reference model
    answers. Every problem is an InvalidRequest naming the line."""
    items: list[ReferenceItem] = []
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("The reference file is not UTF-8 text.", code="invalid_reference_file",
                             param=param) from None
    try:
        for number, line, request in chat_requests(text):
            items.append(_reference_item(number, line, request, with_answers=with_answers, param=param))
            if len(items) > MAX_ITEMS:
                raise InvalidRequest(f"The reference file has more than {MAX_ITEMS} lines.",
                                     code="invalid_reference_file", param=param)
    except ChatLineError as exc:
        raise InvalidRequest(f"Reference file {exc}.", code="invalid_reference_file", param=param) from None
    if not items:
        raise InvalidRequest("The reference file has no lines.", code="invalid_reference_file", param=param)
    return items


#: What a reference line may hold: a chat request's fields (the original's answer is its last message).
REFERENCE_FIELDS = frozenset({"messages", "tools", "tool_choice", "parallel_tool_calls", "response_format"})


def _reference_item(number: int, line: dict[str, Any], request: dict[str, Any], *, with_answers: bool,
                    param: str) -> ReferenceItem:
    unknown = sorted(set(line) - REFERENCE_FIELDS)
    if unknown:  # nothing a user sent is silently left out of the requests the models answer
        raise InvalidRequest(f"Reference file line {number}: unknown field {unknown[0]!r} (a line holds "
                             f"{', '.join(sorted(REFERENCE_FIELDS))}).", code="invalid_reference_file", param=param)
    if line.get("tool_choice") is not None:  # a request's field that training lines do not carry
        request["tool_choice"] = line["tool_choice"]
    _check_request(request, number, param)
    if not with_answers:
        return ReferenceItem(request, None)
    last = line["messages"][-1]
    if not (isinstance(last, dict) and last.get("role") == "assistant"):
        raise InvalidRequest(f"Reference file line {number}: the last message is not the original's answer (an "
                             "assistant turn); give a reference_model to have one answer.",
                             code="invalid_reference_file", param=param)
    return ReferenceItem(request, {"content": last.get("content"), "tool_calls": last.get("tool_calls") or None})


def _check_request(request: dict[str, Any], number: int, param: str) -> None:
    """A line's request must be one /v1/chat/completions would take (so the run cannot fail on it)."""
    from pydantic import ValidationError

    from contracts.inference.schemas import ChatCompletionRequest

    try:
        ChatCompletionRequest.model_validate({**request, "model": "reference"})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidRequest(f"Reference file line {number}: {where}: {first['msg']}.",
                             code="invalid_reference_file", param=param) from None


@dataclass(frozen=True)
class ComparisonSpec:
    """What a server-side comparison runs: `document` is stored with the eval (and as its spec.json)."""

    document: dict[str, Any]
    items: int

    @classmethod
    def of(cls, *, reference_file: str, reference_model: str | None, judge_model: str | None,
           max_new_tokens: int, seed: int, items: int) -> ComparisonSpec:
        document = {"kind": KIND, "name": f"comparison:{reference_file}", "reference_file": reference_file,
                    "reference_model": reference_model, "judge_model": judge_model,
                    "max_new_tokens": max_new_tokens, "temperature": 0.0, "seed": seed}
        return cls(document, items)

    @property
    def name(self) -> str:
        return str(self.document["name"])

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.document, sort_keys=True).encode()).hexdigest()

    @property
    def generations(self) -> int:
        """Answers the run generates (the candidate's, and the reference model's where there is one)."""
        return self.items * (2 if self.document["reference_model"] else 1)


def is_comparison(document: dict[str, Any]) -> bool:
    return document.get("kind") == KIND
