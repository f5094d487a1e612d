"""Scorers for knowledge evals (answers are normalised by evals.normalize).

Contracts:

* Scorers turn (item, response) pairs into `Verdict`s, a batch at a time. `correct` is `None` only for an
  `llm_judge` whose reply could not be parsed and that has no fallback; every other verdict is True or False.
* Label (yes/no) and abstain-token detection is case-insensitive whatever the steps, and tolerates leading
  whitespace, newlines and markup ("**No**", "- Yes."): a label is a category, its case carries no meaning.
* `abstention`: a response abstains when, after normalisation and leading markup, it equals an abstain token or
  starts with one as a whole word. "None", "None.", "**None**", "None of that happened" abstain; "Nonexistent"
  does not. A whole-word prefix is used rather than "the token followed by punctuation" because that would
  flip with the normalize steps (strip_punctuation turns "None, it never happened" into "none it never happened").
* `llm_judge` fills a prompt template (placeholders `{question}` = the item's prompt, `{reference}`,
  `{context}`, `{response}`, `{reference_before}`; missing values read "(none)"), asks the judge model through
  a `Judge` (evals.judge.JudgeClient in the worker) and maps the reply with `verdict_map`: the label whose whole-word, case-insensitive occurrence
  comes first wins, so "Incorrect" never reads as "Correct". An unparseable reply is scored by the fallback
  scorer (`fallback_used=True`) or left unscorable (`correct=None`); either way it is counted in `describe()`.
  An empty response is never sent to the judge: it is incorrect.
* `build_scorers` validates the spec's `scorers` map and raises `InvalidRequest(code="invalid_eval_spec",
  param="scorers.<name>.<field>")` on the first problem.

One file on purpose: each scorer sits beside the configuration checks that build it, so a
scorer's behaviour and what a spec may say about it are read together.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from contracts.errors import InvalidRequest
from evals.items import EvalItem
from evals.normalize import (
    DEFAULT_NORMALIZE,
    NORMALIZERS,
    contains_phrase,
    is_abstention,
    leading_text,
    normalize,
    starts_with_word,
)

SCORER_TYPES = ("exact_match", "contains", "label_match", "abstention", "llm_judge")
JUDGE_PLACEHOLDERS = ("question", "reference", "context", "response", "reference_before")
_MISSING = "(none)"


class Judge(Protocol):
    """The judge model's endpoint, as the `llm_judge` scorer uses it (evals.judge.JudgeClient)."""

    def complete_many(self, model: str, prompts: list[tuple[str, str]], *, temperature: float,
                      max_tokens: int = 8) -> list[str]: ...


@dataclass
class Verdict:
    correct: bool | None  # None only when unscorable (judge output unparseable and no fallback)
    judge_raw: str | None = None  # the judge's raw reply (llm_judge only)
    format_violation: bool = False  # e.g. neither label (or both) found on a yes/no split
    fallback_used: bool = False


class Scorer:
    """Base class. Subclasses score one pair (`_score_one`) or override `score` for batching."""

    type: str = ""

    def __init__(self, name: str, normalize_steps: Sequence[str] = DEFAULT_NORMALIZE) -> None:
        self.name = name
        self.steps = tuple(normalize_steps)

    def score(self, items: Sequence[EvalItem], responses: Sequence[str]) -> list[Verdict]:
        _check_lengths(items, responses)
        return [self._score_one(item, response) for item, response in zip(items, responses, strict=True)]

    def _score_one(self, item: EvalItem, response: str) -> Verdict:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict:
        return {"type": self.type}


def _check_lengths(items: Sequence[EvalItem], responses: Sequence[str]) -> None:
    if len(items) != len(responses):
        raise ValueError(f"{len(items)} items but {len(responses)} responses")


class ExactMatchScorer(Scorer):
    type = "exact_match"

    def _score_one(self, item: EvalItem, response: str) -> Verdict:
        return Verdict(correct=normalize(response, self.steps) == normalize(item.reference, self.steps))


class ContainsScorer(Scorer):
    type = "contains"

    def _score_one(self, item: EvalItem, response: str) -> Verdict:
        reference = normalize(item.reference, self.steps)
        return Verdict(correct=contains_phrase(normalize(response, self.steps), reference))


def _hedge(rest: str, label: str) -> bool:
    """After a first label, does `rest` name a second one as an alternative ("Yes/No", "yes or no", "Yes, no.",
    "yes and no")? A second label that starts an ordinary sentence ("Yes, no doubt") is not a hedge."""
    label = re.escape(label)
    return any(re.match(pattern, rest) for pattern in (
        r"\s*[/|\\]\s*" + label + r"(?!\w)",           # yes/no, yes | no
        r"\s*,?\s*or\s+" + label + r"(?!\w)",           # yes or no
        r"[\s,;]*(?:and\s+)?" + label + r"[\W_]*$",     # "yes no", "yes, no.", "yes and no": nothing else
    ))


class LabelMatchScorer(Scorer):
    """Which label does the response open with? Exactly one must be given, at the start."""

    type = "label_match"

    def __init__(self, name: str, labels: Sequence[str], normalize_steps: Sequence[str] = DEFAULT_NORMALIZE) -> None:
        super().__init__(name, normalize_steps)
        self.labels = tuple(labels)
        # Longest first, so that a label that extends another ("No", "No answer") wins when both fit.
        self._norm = sorted({leading_text(normalize(label, self.steps)).strip() for label in self.labels},
                            key=len, reverse=True)

    def given_label(self, response: str) -> tuple[str | None, bool]:
        """(the normalised label the response gives, format_violation)."""
        text = leading_text(normalize(response, self.steps))
        found = next((label for label in self._norm if starts_with_word(text, label)), None)
        if found is None:
            return None, True
        rest = text[len(found):]
        if any(label != found and _hedge(rest, label) for label in self._norm):
            return None, True
        return found, False

    def _score_one(self, item: EvalItem, response: str) -> Verdict:
        label, violation = self.given_label(response)
        if violation:
            return Verdict(correct=False, format_violation=True)
        return Verdict(correct=label == leading_text(normalize(item.reference, self.steps)).strip())


class AbstentionScorer(Scorer):
    """Correct iff the model declines (the reference is not consulted: the gold answer is always 'none')."""

    type = "abstention"

    def __init__(self, name: str, tokens: Sequence[str], normalize_steps: Sequence[str] = DEFAULT_NORMALIZE) -> None:
        super().__init__(name, normalize_steps)
        self.tokens = tuple(tokens)

    def _score_one(self, item: EvalItem, response: str) -> Verdict:
        return Verdict(correct=is_abstention(response, self.tokens, self.steps))


# ----------------------------------------------------------------------------------------------- the judge
BUILTIN_JUDGE_PROMPTS: dict[str, dict[str, str]] = {
    "ftaas.short_answer.v1": {
        "system": (
            "You grade answers to short factual questions. You receive a question, its reference answer, "
            "optional background context, and a response to grade. Decide whether the response gives the "
            "reference answer.\n"
            "- A partial answer counts as correct when it still points unambiguously to the reference answer "
            "(for example a surname alone when only one person fits, or a number without its unit when the unit "
            "is clear from the question).\n"
            "- Extra wording around the answer is fine.\n"
            "- A different answer, several competing answers, a refusal or no answer at all is incorrect.\n"
            "Reply with exactly one word: Correct or Incorrect."),
        "user": ("Question:\n{question}\n\nReference answer:\n{reference}\n\nContext:\n{context}\n\n"
                 "Response to grade:\n{response}\n\nVerdict (Correct or Incorrect):"),
    },
    "ftaas.free_text.v1": {
        "system": (
            "You grade free-text answers, such as recommendations for a case, against a reference answer. You "
            "receive a question, the reference answer, optional background context, and a response to grade.\n"
            "- The response is correct when its main conclusion or recommendation agrees with the reference "
            "answer. Extra detail is fine as long as it does not contradict the reference.\n"
            "- It is incorrect when it reaches a different conclusion, follows an outdated or superseded "
            "recommendation, hedges between incompatible options, or gives no answer.\n"
            "Reply with exactly one word: Correct or Incorrect."),
        "user": ("Question:\n{question}\n\nReference answer:\n{reference}\n\nContext:\n{context}\n\n"
                 "Response to grade:\n{response}\n\nVerdict (Correct or Incorrect):"),
    },
}

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _fill(template: str, values: Mapping[str, str]) -> str:
    # One pass, so a response that itself contains "{reference}" is not expanded. Braces that are not a known
    # placeholder cannot occur: build_scorers rejects unknown placeholders.
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def parse_verdict(reply: str, verdict_map: Mapping[str, bool]) -> bool | None:
    """The value of the label that occurs first in `reply` (whole word, case-insensitive), None if none does."""
    best: tuple[int, int, bool] | None = None  # (start, -length, value)
    for label, value in verdict_map.items():
        match = re.search(r"(?<!\w)" + re.escape(label.strip()) + r"(?!\w)", reply, re.IGNORECASE)
        if match is not None:
            candidate = (match.start(), -len(label), value)
            if best is None or candidate[:2] < best[:2]:
                best = candidate
    return None if best is None else best[2]


class LLMJudgeScorer(Scorer):
    type = "llm_judge"

    def __init__(self, name: str, *, judge: Judge, judge_model: str, system: str, user: str,
                 verdict_map: Mapping[str, bool], temperature: float = 0.0, fallback: Scorer | None = None,
                 max_tokens: int = 8) -> None:
        super().__init__(name, ())
        self.judge = judge
        self.judge_model = judge_model
        self.system = system
        self.user = user
        self.verdict_map = dict(verdict_map)
        self.temperature = temperature
        self.fallback = fallback
        self.max_tokens = max_tokens
        # Counted over the scorer's lifetime (base and tuned runs together), as the report's scorers_used wants.
        self.unparseable_verdicts = 0

    @property
    def prompt_sha256(self) -> str:
        """sha256 of the canonical JSON of {"system", "user"} (the templates, before filling)."""
        canonical = json.dumps({"system": self.system, "user": self.user}, sort_keys=True, ensure_ascii=False,
                               separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def render(self, item: EvalItem, response: str) -> tuple[str, str]:
        values = {"question": item.prompt, "reference": item.reference, "response": response,
                  "context": item.context if item.context else _MISSING,
                  "reference_before": item.reference_before if item.reference_before else _MISSING}
        return _fill(self.system, values), _fill(self.user, values)

    def score(self, items: Sequence[EvalItem], responses: Sequence[str]) -> list[Verdict]:
        _check_lengths(items, responses)
        verdicts: list[Verdict | None] = [None] * len(items)
        to_judge: list[int] = []
        for index, response in enumerate(responses):
            if response.strip():
                to_judge.append(index)
            else:
                verdicts[index] = Verdict(correct=False)  # nothing to judge; a judge could only hallucinate
        replies = self.judge.complete_many(self.judge_model, [self.render(items[i], responses[i]) for i in to_judge],
                                           temperature=self.temperature, max_tokens=self.max_tokens)
        for index, reply in zip(to_judge, replies, strict=True):
            value = parse_verdict(reply, self.verdict_map)
            if value is not None:
                verdicts[index] = Verdict(correct=value, judge_raw=reply)
                continue
            self.unparseable_verdicts += 1
            if self.fallback is None:
                verdicts[index] = Verdict(correct=None, judge_raw=reply)
            else:
                backup = self.fallback.score([items[index]], [responses[index]])[0]
                verdicts[index] = Verdict(correct=backup.correct, judge_raw=reply,
                                          format_violation=backup.format_violation, fallback_used=True)
        return [v for v in verdicts if v is not None]

    def describe(self) -> dict:
        return {"type": self.type, "judge_model": self.judge_model, "judge_prompt_sha256": self.prompt_sha256,
                "unparseable_verdicts": self.unparseable_verdicts}


# ------------------------------------------------------------------------------------------ configuration
def _invalid(name: str, field: str | None, message: str) -> InvalidRequest:
    param = f"scorers.{name}" + (f".{field}" if field else "")
    return InvalidRequest(f"scorer {name!r}: {message}", code="invalid_eval_spec", param=param)


def _string_list(name: str, field: str, value: object, *, minimum: int) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise _invalid(name, field, f"'{field}' must be a list of strings")
    if len(value) < minimum:
        raise _invalid(name, field, f"'{field}' needs at least {minimum} entr{'y' if minimum == 1 else 'ies'}")
    return list(value)


def _steps(name: str, config: Mapping) -> tuple[str, ...]:
    if "normalize" not in config or config["normalize"] is None:
        return DEFAULT_NORMALIZE
    steps = _string_list(name, "normalize", config["normalize"], minimum=0)
    unknown = [s for s in steps if s not in NORMALIZERS]
    if unknown:
        raise _invalid(name, "normalize", f"unknown normalisation step {unknown[0]!r}; "
                                          f"expected some of {', '.join(NORMALIZERS)}")
    return tuple(steps)


def _judge_templates(name: str, config: Mapping) -> tuple[str, str]:
    if config.get("judge_prompt") is not None:
        prompt = config["judge_prompt"]
        if not isinstance(prompt, Mapping) or not all(isinstance(prompt.get(k), str) for k in ("system", "user")):
            raise _invalid(name, "judge_prompt", "'judge_prompt' must be an object with string 'system' and 'user'")
        system, user = prompt["system"], prompt["user"]
        for part, template in (("system", system), ("user", user)):
            unknown = [p for p in _PLACEHOLDER.findall(template) if p not in JUDGE_PLACEHOLDERS]
            if unknown:
                raise _invalid(name, f"judge_prompt.{part}", f"unknown placeholder {{{unknown[0]}}}; "
                                                              f"expected some of {', '.join(JUDGE_PLACEHOLDERS)}")
        if "response" not in _PLACEHOLDER.findall(system + "\n" + user):
            raise _invalid(name, "judge_prompt.user", "the judge prompt never shows the {response} to grade")
        return system, user
    prompt_id = config.get("judge_prompt_id")
    if prompt_id is None:
        raise _invalid(name, "judge_prompt_id", "an llm_judge needs 'judge_prompt_id' or 'judge_prompt'")
    if prompt_id not in BUILTIN_JUDGE_PROMPTS:
        raise _invalid(name, "judge_prompt_id", f"unknown judge prompt {prompt_id!r}; built in: "
                                                f"{', '.join(BUILTIN_JUDGE_PROMPTS)} (or give 'judge_prompt')")
    builtin = BUILTIN_JUDGE_PROMPTS[prompt_id]
    return builtin["system"], builtin["user"]


def _check_fallbacks(config: Mapping[str, Mapping]) -> None:
    for name, entry in config.items():
        target = entry.get("fallback")
        if target is None:
            continue
        if not isinstance(target, str) or target not in config:
            raise _invalid(name, "fallback", f"fallback {target!r} is not a scorer of this spec")
        chain = [name]
        current: str | None = target
        while current is not None:
            if current in chain:
                raise _invalid(name, "fallback", f"fallback cycle: {' -> '.join(chain + [current])}")
            chain.append(current)
            nxt = config[current].get("fallback")
            current = nxt if isinstance(nxt, str) and nxt in config else None
        if config[target].get("type") == "llm_judge":
            raise _invalid(name, "fallback", f"fallback {target!r} is itself an llm_judge; a fallback must not "
                                             f"need the judge that just failed")


def build_scorers(config: Mapping[str, Mapping], *, judge: Judge | None = None) -> dict[str, Scorer]:
    """The spec's `scorers` map -> {name: Scorer}. Fallbacks (used by llm_judge scorers) are resolved to objects.

    Defaults: normalize = lowercase+strip+collapse_whitespace, judge_temperature = 0. A `fallback` on a scorer
    other than llm_judge is validated but has no effect (only judges can fail to produce a verdict).
    """
    # Long on purpose: each scorer type's configuration checks beside the scorer they build.
    if not isinstance(config, Mapping):
        raise InvalidRequest("'scorers' must be an object", code="invalid_eval_spec", param="scorers")
    for name, entry in config.items():
        if not isinstance(entry, Mapping):
            raise _invalid(name, None, "each scorer must be an object")
        if entry.get("type") not in SCORER_TYPES:
            raise _invalid(name, "type", f"type is {entry.get('type')!r}; expected one of {', '.join(SCORER_TYPES)}")
    _check_fallbacks(config)

    built: dict[str, Scorer] = {}
    for name, entry in config.items():  # plain scorers first, so judges can point at their fallback
        kind = entry["type"]
        if kind == "llm_judge":
            continue
        steps = _steps(name, entry)
        if kind == "exact_match":
            built[name] = ExactMatchScorer(name, steps)
        elif kind == "contains":
            built[name] = ContainsScorer(name, steps)
        elif kind == "label_match":
            labels = _string_list(name, "labels", entry.get("labels"), minimum=2)
            normalised = [leading_text(normalize(label, steps)).strip() for label in labels]
            if not all(normalised):
                bad = labels[normalised.index("")]
                raise _invalid(name, "labels", f"label {bad!r} is empty after normalisation")
            if len(set(normalised)) != len(normalised):
                raise _invalid(name, "labels", "two labels are the same after normalisation")
            built[name] = LabelMatchScorer(name, labels, steps)
        else:  # abstention
            tokens = _string_list(name, "abstain_tokens", entry.get("abstain_tokens"), minimum=1)
            if not all(leading_text(normalize(token, steps)).strip() for token in tokens):
                raise _invalid(name, "abstain_tokens", "an abstain token is empty after normalisation")
            built[name] = AbstentionScorer(name, tokens, steps)

    for name, entry in config.items():
        if entry["type"] != "llm_judge":
            continue
        _steps(name, entry)  # validated although a judge does not normalise
        model = entry.get("judge_model")
        if not isinstance(model, str) or not model.strip():
            raise _invalid(name, "judge_model", "an llm_judge needs 'judge_model'")
        system, user = _judge_templates(name, entry)
        verdict_map = entry.get("verdict_map")
        if (not isinstance(verdict_map, Mapping) or not verdict_map
                or not all(isinstance(k, str) and k.strip() and isinstance(v, bool) for k, v in verdict_map.items())):
            raise _invalid(name, "verdict_map", "'verdict_map' must map non-empty labels to true/false")
        temperature = entry.get("judge_temperature", 0.0)
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or temperature < 0:
            raise _invalid(name, "judge_temperature", "'judge_temperature' must be a number >= 0")
        if judge is None:
            raise _invalid(name, "judge_model", "an llm_judge scorer needs a judge endpoint, and none is configured")
        fallback = entry.get("fallback")
        built[name] = LLMJudgeScorer(name, judge=judge, judge_model=model, system=system, user=user,
                                     verdict_map=verdict_map, temperature=float(temperature),
                                     fallback=built[fallback] if fallback else None)
    return {name: built[name] for name in config}  # the spec's order
