"""The grader-testing API through the official SDK against a live embedded server:
`client.fine_tuning.alpha.graders.run` and `.validate`, every grader type, OpenAI's response shape, and a
score_model grader answered by ftaas's own engine (the packaged real model, with the score constrained to
JSON)."""

from __future__ import annotations

import openai
import pytest

from contracts.settings import PACKAGED_BASE_MODEL
from tests.e2e.servers import LiveServer

pytestmark = pytest.mark.slow

EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
         "operation": "eq"}
SIMILAR = {"type": "text_similarity", "name": "similar", "input": "{{sample.output_text}}",
           "reference": "{{item.answer}}", "evaluation_metric": "rouge_l"}
PYTHON = {"type": "python", "name": "length", "source": (
    "import os\n"
    "def grade(sample, item):\n"
    "    assert not any(k.startswith('FTAAS') for k in os.environ), 'a secret is in reach'\n"
    "    return min(1.0, len(sample['output_text']) / len(item['answer']))\n")}


def test_run_returns_openai_s_shape_for_each_grader_type(embedded: LiveServer) -> None:
    client = embedded.client()
    graders = client.fine_tuning.alpha.graders
    exact = graders.run(grader=EXACT, model_sample="Paris", item={"answer": "Paris"})
    assert exact.reward == 1.0 and exact.metadata.type == "string_check" and exact.metadata.name == "exact"
    assert exact.metadata.errors.invalid_variable_error is False and exact.metadata.execution_time >= 0

    similar = graders.run(grader=SIMILAR, model_sample="the capital is Paris", item={"answer": "Paris is the capital"})
    assert 0 < similar.reward < 1

    python = graders.run(grader=PYTHON, model_sample="Par", item={"answer": "Paris"})
    assert python.reward == pytest.approx(0.6) and python.metadata.errors.python_grader_runtime_error is False

    multi = graders.run(grader={"type": "multi", "name": "both", "calculate_output": "0.5 * exact + 0.5 * length",
                                "graders": {"exact": EXACT, "length": PYTHON}},
                        model_sample="Paris", item={"answer": "Paris"})
    assert multi.reward == 1.0 and multi.sub_rewards == {"exact": 1.0, "length": 1.0}


def test_grader_errors_are_reported_in_metadata_not_as_http_errors(embedded: LiveServer) -> None:
    graders = embedded.client().fine_tuning.alpha.graders
    missing = graders.run(grader=EXACT, model_sample="Paris", item={"question": "?"})
    assert missing.reward == 0 and missing.metadata.errors.invalid_variable_error is True
    escaping = graders.run(grader={"type": "python", "name": "x", "source": (
        "def grade(sample, item):\n    return float(len(open('/etc/hostname').read() + open('ftaas.db').read()))\n")},
        model_sample="x", item={})
    assert escaping.metadata.errors.python_grader_runtime_error is True
    assert "No such file" in (escaping.metadata.errors.python_grader_runtime_error_details or "")


def test_score_model_is_answered_by_ftaas_s_own_engine(embedded: LiveServer) -> None:
    graders = embedded.client().fine_tuning.alpha.graders
    result = graders.run(grader={
        "type": "score_model", "name": "judge", "model": PACKAGED_BASE_MODEL, "range": [0, 10],
        "sampling_params": {"max_completions_tokens": 16},
        "input": [{"role": "system", "content": "You grade answers from 0 (wrong) to 10 (right)."},
                  {"role": "user", "content": "Question: {{item.question}}\nAnswer: {{sample.output_text}}"}]},
        model_sample="Paris", item={"question": "What is the capital of France?"})
    assert not result.metadata.errors.model_grader_server_error, result.metadata.errors
    assert not result.metadata.errors.model_grader_parse_error, result.metadata.scores
    assert 0 <= result.reward <= 10
    usage = result.model_grader_token_usage_per_model[PACKAGED_BASE_MODEL]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0


def test_validate_echoes_a_good_grader_and_refuses_bad_ones_with_400(embedded: LiveServer) -> None:
    graders = embedded.client().fine_tuning.alpha.graders
    validated = graders.validate(grader=EXACT).grader
    assert validated is not None and validated.name == "exact"
    with pytest.raises(openai.BadRequestError, match="never closed") as caught:
        graders.validate(grader=EXACT | {"reference": "{{item.answer"})
    assert caught.value.param == "grader.reference"
    with pytest.raises(openai.BadRequestError, match="does not compile"):
        graders.validate(grader={"type": "python", "name": "p", "source": "def grade(s, i) return 1"})
    with pytest.raises(openai.BadRequestError, match="not one of its graders"):
        graders.validate(grader={"type": "multi", "name": "m", "calculate_output": "exact + other",
                                 "graders": {"exact": EXACT}})
    with pytest.raises(openai.BadRequestError):
        graders.run(grader={"type": "string_check", "name": "s", "input": "a", "reference": "b",
                            "operation": "regex"}, model_sample="a")


def test_graders_need_a_key(embedded: LiveServer) -> None:
    with pytest.raises(openai.AuthenticationError):
        embedded.client(key="sk-wrong").fine_tuning.alpha.graders.validate(grader=EXACT)
