"""Creating reinforcement fine-tuning jobs: OpenAI's method shape is accepted and returned as sent, and what
cannot run is a 400 naming the field or the data line, before anything is stored."""

from __future__ import annotations

import json

from tests.api.conftest import Api
from tests.api.test_http_contract import assert_error, processed_file

EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
         "operation": "eq"}


def rft_file(api: Api, rows: list[dict] | None = None) -> str:
    rows = rows if rows is not None else [
        {"messages": [{"role": "user", "content": f"What is {n} + {n}?"}], "answer": str(2 * n)} for n in range(12)]
    return processed_file(api, ("\n".join(json.dumps(r) for r in rows) + "\n").encode())


def create(api: Api, file_id: str, reinforcement: dict, **extra: object):
    return api.client.post("/v1/fine_tuning/jobs", headers=api.headers(), json={
        "model": "ftaas-tiny", "training_file": file_id,
        "method": {"type": "reinforcement", "reinforcement": reinforcement}, **extra})


def test_a_reinforcement_job_is_created_with_its_grader_and_hyperparameters_as_sent(api: Api) -> None:
    hyperparameters = {"n_epochs": 2, "batch_size": 4, "compute_multiplier": 0.5, "eval_interval": 3,
                       "eval_samples": 2, "learning_rate_multiplier": "auto", "reasoning_effort": "medium"}
    response = create(api, rft_file(api), {"grader": EXACT, "hyperparameters": hyperparameters})
    assert response.status_code == 200, response.text
    method = response.json()["method"]
    assert method["type"] == "reinforcement"
    assert method["reinforcement"]["grader"] == EXACT
    assert method["reinforcement"]["hyperparameters"] == hyperparameters


def test_a_grader_that_cannot_run_is_400_naming_its_field(api: Api) -> None:
    file_id = rft_file(api)
    cases = [
        (EXACT | {"reference": "{{item.answer"}, "method.reinforcement.grader.reference"),
        ({"type": "multi", "name": "m", "calculate_output": "exact + missing", "graders": {"exact": EXACT}},
         "method.reinforcement.grader.calculate_output"),
        ({"type": "python", "name": "p", "source": "def grade(s, i) return 1"}, "method.reinforcement.grader.source"),
        ({"type": "score_model", "name": "judge", "model": "gpt-4o", "input": [{"role": "user", "content": "x"}]},
         "method.reinforcement.grader"),
    ]
    for grader, param in cases:
        assert_error(create(api, file_id, {"grader": grader}), 400, param=param)


def test_a_line_without_a_field_the_grader_reads_is_named(api: Api) -> None:
    rows = [{"messages": [{"role": "user", "content": f"Q{n}"}], "answer": "a"} for n in range(12)]
    del rows[6]["answer"]
    error = assert_error(create(api, rft_file(api, rows), {"grader": EXACT}), 400, "invalid_training_file",
                         "training_file")
    assert "line 7" in error["message"] and "'answer'" in error["message"]


def test_reinforcement_needs_reinforcement_data_and_sft_refuses_it(api: Api) -> None:
    chat = processed_file(api)
    assert_error(create(api, chat, {"grader": EXACT}), 400, "invalid_training_file", "training_file")
    response = api.client.post("/v1/fine_tuning/jobs", headers=api.headers(),
                               json={"model": "ftaas-tiny", "training_file": rft_file(api)})
    assert_error(response, 400, "invalid_training_file", "training_file")


def test_reinforcement_trains_lora_family_adapters_qlora_included(api: Api) -> None:
    file_id = rft_file(api)
    for adapter in ({"type": "ia3"}, {"type": "lora", "init": "pissa"}):
        assert_error(create(api, file_id, {"grader": EXACT, "adapter": adapter}), 400, param="method.reinforcement")
    # QLoRA trains lora or rslora adapters, whatever the method
    assert_error(create(api, file_id, {"grader": EXACT, "adapter": {"type": "dora", "quantization": "nf4"}}), 400,
                 param="method.reinforcement.adapter")
    qlora = create(api, file_id, {"grader": EXACT, "adapter": {"type": "lora", "quantization": "nf4"}})
    assert qlora.status_code == 200, qlora.text
    assert qlora.json()["method"]["reinforcement"]["adapter"]["quantization"] == "nf4"
