"""Normalisation and scorers: what counts as the same answer, and what the judge path does.

The LLM-judge tests go over real HTTP: a tiny OpenAI-compatible server runs in a thread on 127.0.0.1 and
grades like a judge would (Correct when the response contains the reference), or replies garbage on request.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from contracts.errors import InfrastructureError, InvalidRequest
from evals.items import EvalItem
from evals.judge import JudgeClient
from evals.normalize import NORMALIZERS, answer_matches, is_abstention, normalize
from evals.scoring import (
    BUILTIN_JUDGE_PROMPTS,
    JUDGE_PLACEHOLDERS,
    Verdict,
    build_scorers,
    parse_verdict,
)

ALL = NORMALIZERS


def item(reference: str, *, prompt: str = "Q?", context: str | None = None,
         reference_before: str | None = None) -> EvalItem:
    return EvalItem(dataset_id="d", setting="new_knowledge", split_id="s", variant="original",
                    counts_toward="memorization", item_id="i", prompt=prompt, reference=reference,
                    context=context, reference_before=reference_before)


def score(config: dict, reference: str, response: str, **kwargs: Any) -> Verdict:
    scorer = build_scorers({"s": config}, **kwargs)["s"]
    return scorer.score([item(reference)], [response])[0]


# ------------------------------------------------------------------------------------------ normalisation
@pytest.mark.parametrize(("text", "steps", "expected"), [
    ("  Mixed CASE  ", ["lowercase"], "  mixed case  "),
    ("STRASSE Straße", ["lowercase"], "strasse strasse"),  # casefold, not lower
    ("  padded\n", ["strip"], "padded"),
    ("a \t b\n\nc", ["collapse_whitespace"], "a b c"),
    # punctuation: ASCII and Unicode (curly quotes, em dash, ellipsis, inverted marks) and Markdown
    ("Hello, world!", ["strip_punctuation"], "Hello world"),
    ("\u201cQuoted\u201d \u2014 \u2018single\u2019\u2026", ["strip_punctuation", "collapse_whitespace"],
     "Quoted single"),
    ("\u00bfQu\u00e9?", ["strip_punctuation"], "Qu\u00e9"),
    ("**Bold** and `code`", ["strip_punctuation"], "Bold and code"),
    # inside words: apostrophes and periods vanish, other marks separate the words
    ("don't O\u2019Neil U.S.", ["strip_punctuation"], "dont ONeil US"),
    ("Jean-Luc yes/no Yes,he", ["strip_punctuation"], "Jean Luc yes no Yes he"),
    # numbers and identifiers survive punctuation stripping
    ("2.12 m, 1,000 t, -3 C.", ["strip_punctuation"], "2.12 m 1,000 t -3 C"),
    ("n_estimators _emph_", ["strip_punctuation"], "n_estimators emph"),
    # articles are whole words only, any case; the gap they leave is closed
    ("The cat ate an apple and a pear", ["strip_articles"], "cat ate apple and pear"),
    ("theatre another bean Anna", ["strip_articles"], "theatre another bean Anna"),
    ("go to the", ["strip_articles"], "go to"),
    ("(the answer)", ["strip_articles"], "(answer)"),
    ("a.m. A's the-end", ["strip_articles"], "a.m. A's the-end"),
    # numbers
    ("1,000", ["numeric_canonical"], "1000"),
    ("126.0", ["numeric_canonical"], "126"),
    ("3.50", ["numeric_canonical"], "3.5"),
    ("-0", ["numeric_canonical"], "0"),
    ("0.00 and +7 and \u22122.50", ["numeric_canonical"], "0 and 7 and -2.5"),
    ("$1,234,567.80 or 12.0%", ["numeric_canonical"], "$1234567.8 or 12%"),
    ("1,000.", ["numeric_canonical"], "1000."),
    # ... and non-numbers are left alone
    ("v1.2.3 12th 1,00 007 2024-09-12 3rd 1e5 B52", ["numeric_canonical"],
     "v1.2.3 12th 1,00 007 2024-09-12 3rd 1e5 B52"),
    ("", list(ALL), ""),
    ("unchanged", [], "unchanged"),
])
def test_normalize(text: str, steps: list[str], expected: str) -> None:
    assert normalize(text, steps) == expected


def test_all_steps_together() -> None:
    assert normalize("  The TOTAL was 1,000.00 tons.\n", ALL) == "total was 1000 tons"
    assert normalize("\u201cAn\u201d  answer \u2014 126.0!", ALL) == "answer 126"


def test_steps_are_a_set_applied_in_a_fixed_order() -> None:
    # "No.\n": whichever way the spec lists them, punctuation goes before the final strip.
    assert normalize("No.\n", ["strip", "strip_punctuation"]) == normalize("No.\n", ["strip_punctuation", "strip"])
    assert normalize(" 1,000. ", ["strip", "numeric_canonical", "strip_punctuation"]) == "1000"


def test_unicode_is_compared_in_nfc() -> None:
    assert normalize("Cafe\u0301", []) == "Caf\u00e9"


def test_unknown_step_is_an_error() -> None:
    with pytest.raises(ValueError, match="stemming"):
        normalize("x", ["stemming"])


# ------------------------------------------------------------------------------------------ plain scorers
EXACT = {"type": "exact_match"}  # default normalize: lowercase + strip + collapse_whitespace


@pytest.mark.parametrize(("reference", "response", "correct"), [
    ("Toronto", "toronto", True),
    ("Toronto", "  TORONTO \n", True),
    ("New  York", "new york", True),
    ("Toronto", "Toronto.", False),  # no strip_punctuation by default
    ("Toronto", "It is Toronto", False),
    ("126", "126.0", False),  # no numeric_canonical by default
])
def test_exact_match_default_normalisation(reference: str, response: str, correct: bool) -> None:
    assert score(EXACT, reference, response) == Verdict(correct=correct)


@pytest.mark.parametrize(("reference", "response"), [
    ("1,000 tons", "1000 tons."),
    ("The Blue Lagoon", "blue lagoon"),
    ("126", "126.0"),
    ("3.5", "3.50!"),
    ("rock\u2011and\u2011roll", "Rock and roll"),  # non-breaking hyphens
    ("It\u2019s fine", "its fine"),
])
def test_exact_match_with_every_step(reference: str, response: str) -> None:
    assert score({"type": "exact_match", "normalize": list(ALL)}, reference, response).correct is True


CONTAINS = {"type": "contains", "normalize": ["lowercase", "strip_punctuation", "collapse_whitespace"]}


@pytest.mark.parametrize(("reference", "response", "correct"), [
    ("Oslo", "The meeting took place in Oslo, Norway.", True),
    ("oslo", "OSLO", True),
    ("Oslo", "Osloborg is a town", False),  # whole word only
    ("cat", "concatenate", False),
    ("3", "about 3.5 metres", False),  # a number is not part of a longer number
    ("3.5", "about 3.5 metres", True),
    ("12", "112 people", False),
    ("red maple", "It was a Red  Maple.", True),
    ("Oslo", "", False),
])
def test_contains(reference: str, response: str, correct: bool) -> None:
    assert score(CONTAINS, reference, response).correct is correct


YES_NO = {"type": "label_match", "labels": ["Yes", "No"], "normalize": ["lowercase", "strip"]}


@pytest.mark.parametrize(("response", "reference", "correct", "violation"), [
    ("Yes", "Yes", True, False),
    ("yes", "Yes", True, False),
    ("Yes.", "Yes", True, False),
    ("yes, he is", "Yes", True, False),
    ("**No**", "No", True, False),
    ("\n\n  No.\n", "No", True, False),
    ("- No, she lives elsewhere", "No", True, False),
    ("No", "Yes", False, False),
    ("Yes/No", "Yes", False, True),  # both labels up front: no answer
    ("yes or no", "No", False, True),
    ("Yes and no.", "Yes", False, True),
    ("No, yes", "No", False, True),
    ("Yes, no doubt about it", "Yes", True, False),  # a second label inside a sentence is no hedge
    ("No. Yes would be wrong", "No", True, False),
    ("Nope", "No", False, True),  # neither label as a whole word
    ("Yesterday", "Yes", False, True),
    ("red", "No", False, True),
    ("", "No", False, True),
    ("I think yes", "Yes", False, True),  # the label must come first
])
def test_label_match(response: str, reference: str, correct: bool, violation: bool) -> None:
    assert score(YES_NO, reference, response) == Verdict(correct=correct, format_violation=violation)


def test_label_match_prefers_the_longer_of_two_overlapping_labels() -> None:
    config = {"type": "label_match", "labels": ["No", "No answer", "Yes"]}
    assert score(config, "No answer", "No answer.").correct is True
    assert score(config, "No", "No answer.").correct is False
    assert score(config, "No", "No.").correct is True


def test_label_match_multiple_choice_letters() -> None:
    config = {"type": "label_match", "labels": ["A", "B", "C", "D"], "normalize": ["lowercase", "strip"]}
    assert score(config, "B", "(B) the second one").correct is True
    assert score(config, "B", "b)").correct is True
    assert score(config, "B", "Because").format_violation is True


ABSTAIN = {"type": "abstention", "abstain_tokens": ["None", "I don't know"],
           "normalize": ["lowercase", "strip", "strip_punctuation"]}


@pytest.mark.parametrize(("response", "abstains"), [
    ("None", True),
    ("None.", True),
    ("none\n", True),
    ("**None**", True),
    ("None of that happened.", True),  # decided: starting with the token as a whole word abstains
    ("None, the event has not taken place", True),
    ("I don\u2019t know.", True),
    ("Nonexistent", False),
    ("Nonetheless, 42", False),
    ("42", False),
    ("The answer is none", False),  # must open with the token
    ("", False),
])
def test_abstention(response: str, abstains: bool) -> None:
    assert score(ABSTAIN, "None", response).correct is abstains
    assert is_abstention(response, ABSTAIN["abstain_tokens"], ABSTAIN["normalize"]) is abstains


def test_abstention_without_strip_punctuation_still_reads_markup() -> None:
    assert is_abstention("**None.**", ["None"], ["lowercase"]) is True
    assert is_abstention("NONE", ["None"], []) is True  # token detection ignores case


@pytest.mark.parametrize(("response", "target", "matches"), [
    ("42", "42", True),
    ("It was 42 kilograms.", "42 kilograms", True),
    ("It was 142 kilograms.", "42", False),
    ("The old dose was 10 mg", "10 mg", True),
    ("fit", "fit", True),
    ("use fit_transform", "fit", False),
    ("anything", "", False),
    ("anything", "  ", False),
])
def test_answer_matches(response: str, target: str, matches: bool) -> None:
    assert answer_matches(response, target, ["lowercase", "strip", "strip_punctuation", "collapse_whitespace"]) \
        is matches


# ------------------------------------------------------------------------------------------ verdict parsing
VERDICT_MAP = {"Correct": True, "Incorrect": False}


@pytest.mark.parametrize(("reply", "expected"), [
    ("Correct", True),
    ("Incorrect", False),
    ("incorrect.", False),
    ("INCORRECT", False),
    ("**Correct**", True),
    ("Verdict: Incorrect", False),
    ("Incorrect. The correct answer is 12.", False),  # the first label wins
    ("Correct, not incorrect", True),
    ("Incorrectly phrased", None),
    ("I cannot decide", None),
    ("", None),
])
def test_parse_verdict(reply: str, expected: bool | None) -> None:
    assert parse_verdict(reply, VERDICT_MAP) is expected


# ------------------------------------------------------------------------------------------ configuration
def test_builtin_judge_prompt() -> None:
    prompt = BUILTIN_JUDGE_PROMPTS["ftaas.short_answer.v1"]
    text = prompt["system"] + prompt["user"]
    placeholders = set(re.findall(r"\{(\w+)\}", text))
    assert placeholders == {"question", "reference", "context", "response"}
    assert placeholders <= set(JUDGE_PLACEHOLDERS)
    assert "Correct or Incorrect" in prompt["system"] and "partial" in prompt["system"]


JUDGE = {"type": "llm_judge", "judge_model": "judge-1", "judge_prompt_id": "ftaas.short_answer.v1",
         "verdict_map": VERDICT_MAP, "fallback": "exact"}


@pytest.mark.parametrize(("config", "param"), [
    ({"s": {"type": "fuzzy"}}, "scorers.s.type"),
    ({"s": "exact_match"}, "scorers.s"),
    ({"s": {"type": "exact_match", "normalize": ["lowercase", "stem"]}}, "scorers.s.normalize"),
    ({"s": {"type": "label_match"}}, "scorers.s.labels"),
    ({"s": {"type": "label_match", "labels": ["Yes"]}}, "scorers.s.labels"),
    ({"s": {"type": "label_match", "labels": ["Yes", "YES"]}}, "scorers.s.labels"),
    ({"s": {"type": "label_match", "labels": ["A", "B"], "normalize": ["strip_articles"]}}, "scorers.s.labels"),
    ({"s": {"type": "abstention", "abstain_tokens": []}}, "scorers.s.abstain_tokens"),
    ({"s": {**JUDGE, "fallback": "nowhere"}, "exact": EXACT}, "scorers.s.fallback"),
    ({"s": {**JUDGE, "fallback": "s"}}, "scorers.s.fallback"),
    ({"s": {**JUDGE, "fallback": "j2"}, "j2": {**JUDGE, "fallback": None}}, "scorers.s.fallback"),
    ({"a": {"type": "exact_match", "fallback": "b"}, "b": {"type": "contains", "fallback": "a"}},
     "scorers.a.fallback"),
    ({"s": {**JUDGE, "judge_prompt_id": "finetunebench.eval_prompt"}, "exact": EXACT}, "scorers.s.judge_prompt_id"),
    ({"s": {**JUDGE, "judge_prompt_id": None}, "exact": EXACT}, "scorers.s.judge_prompt_id"),
    ({"s": {**JUDGE, "judge_prompt": {"system": "Grade {answer}", "user": "{response}"}}, "exact": EXACT},
     "scorers.s.judge_prompt.system"),
    ({"s": {**JUDGE, "judge_prompt": {"system": "Grade", "user": "{reference} {guess}"}}, "exact": EXACT},
     "scorers.s.judge_prompt.user"),
    ({"s": {**JUDGE, "judge_prompt": {"system": "Grade", "user": "{reference}"}}, "exact": EXACT},
     "scorers.s.judge_prompt.user"),
    ({"s": {**JUDGE, "judge_model": ""}, "exact": EXACT}, "scorers.s.judge_model"),
    ({"s": {**JUDGE, "verdict_map": {"Correct": "yes"}}, "exact": EXACT}, "scorers.s.verdict_map"),
    ({"s": {**JUDGE, "judge_temperature": -1}, "exact": EXACT}, "scorers.s.judge_temperature"),
])
def test_bad_scorer_configs(config: dict, param: str) -> None:
    judge = JudgeClient("http://127.0.0.1:9/v1", "unused")
    with pytest.raises(InvalidRequest) as info:
        build_scorers(config, judge=judge)
    assert info.value.code == "invalid_eval_spec"
    assert info.value.param == param


def test_llm_judge_needs_a_judge_client() -> None:
    with pytest.raises(InvalidRequest) as info:
        build_scorers({"j": {**JUDGE, "fallback": None}})
    assert info.value.param == "scorers.j.judge_model"


def test_build_scorers_keeps_the_spec_order_and_describes_plain_scorers() -> None:
    scorers = build_scorers({"yn": YES_NO, "exact": EXACT, "abstain": ABSTAIN})
    assert list(scorers) == ["yn", "exact", "abstain"]
    assert scorers["yn"].describe() == {"type": "label_match"}
    assert scorers["exact"].name == "exact" and scorers["exact"].type == "exact_match"


def test_score_needs_one_response_per_item() -> None:
    with pytest.raises(ValueError):
        build_scorers({"e": EXACT})["e"].score([item("x")], [])


# ------------------------------------------------------------------------------------------ the judge, over HTTP
@dataclass
class FakeJudge:
    url: str
    requests: list[dict] = field(default_factory=list)
    peak_in_flight: int = 0


def _grade(user: str) -> str:
    reference = re.search(r"Reference answer:\n(.*?)\n\nContext:", user, re.DOTALL)
    response = re.search(r"Response to grade:\n(.*?)\n\nVerdict", user, re.DOTALL)
    if reference is None or response is None:
        return "cannot find the fields"
    if "[garbage]" in response.group(1):
        return "Hmm, hard to say."
    if "[shout]" in response.group(1):
        return "**INCORRECT**"
    return "Correct" if reference.group(1).lower() in response.group(1).lower() else "Incorrect"


@pytest.fixture
def fake_judge(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeJudge]:
    for variable in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)  # 127.0.0.1 must not go through a proxy
    lock = threading.Lock()
    state = {"in_flight": 0}
    judge = FakeJudge(url="")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # http.server's naming
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                judge.requests.append({"path": self.path, **request})
                state["in_flight"] += 1
                judge.peak_in_flight = max(judge.peak_in_flight, state["in_flight"])
            time.sleep(0.02)  # long enough for concurrent requests to overlap
            if self.path != "/v1/chat/completions":
                status, body = 404, {"error": {"message": "no such route", "type": "invalid_request_error"}}
            elif request["model"] == "missing-model":
                status, body = 404, {"error": {"message": "model not found", "type": "invalid_request_error",
                                               "code": "model_not_found"}}
            else:
                user = next(m["content"] for m in request["messages"] if m["role"] == "user")
                status, body = 200, {
                    "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": request["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": _grade(user)}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
            # Out of flight before the reply leaves: once the client has it, it may send its next request
            # before this thread would get to count this one done (seen: a peak of 4 with a limit of 3).
            with lock:
                state["in_flight"] -= 1
            self._send(status, body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    judge.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield judge
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_judge_client_round_trip(fake_judge: FakeJudge) -> None:
    client = JudgeClient(fake_judge.url, "sk-test", timeout=5)
    user = "Reference answer:\nBlue\n\nContext:\n(none)\n\nResponse to grade:\nIt is blue\n\nVerdict"
    assert client.complete("judge-1", "sys", user, temperature=0.0) == "Correct"
    sent = fake_judge.requests[0]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["model"] == "judge-1" and sent["temperature"] == 0.0 and sent["max_tokens"] == 8
    assert sent["messages"] == [{"role": "system", "content": "sys"}, {"role": "user", "content": user}]


def test_complete_many_keeps_order_and_bounds_concurrency(fake_judge: FakeJudge) -> None:
    client = JudgeClient(fake_judge.url, "sk-test", timeout=5, max_concurrency=3)
    answers = [f"x{i}" if i % 2 else "other" for i in range(12)]
    prompts = [("", f"Reference answer:\nx{i}\n\nContext:\n-\n\nResponse to grade:\n{answer}\n\nVerdict")
               for i, answer in enumerate(answers)]
    replies = client.complete_many("judge-1", prompts, temperature=0.0)
    assert replies == ["Correct" if i % 2 else "Incorrect" for i in range(12)]
    assert 2 <= fake_judge.peak_in_flight <= 3
    assert all(len(r["messages"]) == 1 for r in fake_judge.requests)  # no system turn when it is empty


def test_llm_judge_scorer_with_fallback(fake_judge: FakeJudge) -> None:
    client = JudgeClient(fake_judge.url, "sk-test", timeout=5)
    scorers = build_scorers({"judge": {**JUDGE, "judge_temperature": 0.3}, "exact": EXACT}, judge=client)
    judge = scorers["judge"]
    items = [item("Lisbon", prompt="Where? {reference}", context="Some context"), item("Lisbon"),
             item("Lisbon"), item("Lisbon"), item("Lisbon"), item("Lisbon")]
    responses = ["It was Lisbon, {reference}.",  # judged correct; "{reference}" in the response is not expanded
                 "Madrid",                       # judged incorrect
                 "lisbon [garbage]",             # unparseable: fallback exact match says incorrect
                 "[garbage]",                    # unparseable: fallback exact match says incorrect
                 "Lisbon [shout]",               # "**INCORRECT**" parses as incorrect
                 "   "]                          # empty: incorrect without asking the judge
    verdicts = judge.score(items, responses)
    assert [v.correct for v in verdicts] == [True, False, False, False, False, False]
    assert [v.fallback_used for v in verdicts] == [False, False, True, True, False, False]
    assert [v.judge_raw for v in verdicts] == ["Correct", "Incorrect", "Hmm, hard to say.", "Hmm, hard to say.",
                                               "**INCORRECT**", None]
    assert len(fake_judge.requests) == 5
    assert {(r["model"], r["temperature"]) for r in fake_judge.requests} == {("judge-1", 0.3)}
    # requests arrive in any order (they are concurrent); find the first item's by its response
    [first] = [r for r in fake_judge.requests if "It was Lisbon" in r["messages"][1]["content"]]
    system, user = first["messages"][0]["content"], first["messages"][1]["content"]
    assert system == BUILTIN_JUDGE_PROMPTS["ftaas.short_answer.v1"]["system"]
    assert "Where? {reference}" in user and "Some context" in user and "It was Lisbon, {reference}." in user
    [second] = [r for r in fake_judge.requests if "Madrid" in r["messages"][1]["content"]]
    assert "Context:\n(none)" in second["messages"][1]["content"]

    described = judge.describe()
    assert described["type"] == "llm_judge" and described["judge_model"] == "judge-1"
    assert re.fullmatch(r"[0-9a-f]{64}", described["judge_prompt_sha256"])
    assert described["unparseable_verdicts"] == 2
    judge.score([item("Lisbon")], ["[garbage] Lisbon"])  # the count accumulates over calls (base + tuned)
    assert judge.describe()["unparseable_verdicts"] == 3


def test_fallback_exact_match_can_rescue_an_unparseable_verdict(fake_judge: FakeJudge) -> None:
    client = JudgeClient(fake_judge.url, "sk-test", timeout=5)
    loose = {"type": "contains", "normalize": ["lowercase", "strip_punctuation", "collapse_whitespace"]}
    judge = build_scorers({"judge": {**JUDGE, "fallback": "loose"}, "loose": loose}, judge=client)["judge"]
    [verdict] = judge.score([item("Lisbon")], ["Lisbon [garbage]"])
    assert verdict == Verdict(correct=True, judge_raw="Hmm, hard to say.", fallback_used=True)


def test_unparseable_without_fallback_is_unscorable(fake_judge: FakeJudge) -> None:
    client = JudgeClient(fake_judge.url, "sk-test", timeout=5)
    judge = build_scorers({"judge": {**JUDGE, "fallback": None}}, judge=client)["judge"]
    [verdict] = judge.score([item("Lisbon")], ["[garbage]"])
    assert verdict == Verdict(correct=None, judge_raw="Hmm, hard to say.")
    assert judge.describe()["unparseable_verdicts"] == 1


def test_custom_judge_prompt_and_its_hash(fake_judge: FakeJudge) -> None:
    client = JudgeClient(fake_judge.url, "sk-test", timeout=5)
    prompt = {"system": "Grade against {reference_before} too.",
              "user": "Reference answer:\n{reference}\n\nContext:\n{context}\n\nResponse to grade:\n{response}"
                      "\n\nVerdict {not a placeholder}"}
    config = {"type": "llm_judge", "judge_model": "judge-2", "judge_prompt": prompt,
              "verdict_map": {"Correct": True, "Incorrect": False}}
    judge = build_scorers({"judge": config}, judge=client)["judge"]
    [verdict] = judge.score([item("12 mg", reference_before="10 mg")], ["12 mg daily"])
    assert verdict.correct is True
    assert fake_judge.requests[0]["messages"][0]["content"] == "Grade against 10 mg too."
    builtin = build_scorers({"judge": {**JUDGE, "fallback": None}}, judge=client)["judge"]
    assert judge.describe()["judge_prompt_sha256"] != builtin.describe()["judge_prompt_sha256"]


def test_judge_refusal_and_outage_are_typed_errors(fake_judge: FakeJudge) -> None:
    client = JudgeClient(fake_judge.url, "sk-test", timeout=5)
    with pytest.raises(InvalidRequest) as refused:
        client.complete("missing-model", "", "hi", temperature=0.0)
    assert refused.value.code == "judge_request_failed"

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    closed = JudgeClient(f"http://127.0.0.1:{port}/v1", "sk-test", timeout=2, max_retries=0)
    with pytest.raises(InfrastructureError) as unreachable:
        closed.complete_many("judge-1", [("", "hi")], temperature=0.0)
    assert unreachable.value.code == "judge_unavailable"
