"""Creating SPIN jobs (`method.supervised.self_play`): accepted on supervised data with its options
recorded as resolved, and what does not apply to it is a 400 naming the field, before anything is stored."""

from __future__ import annotations

from tests.api.conftest import Api
from tests.api.test_http_contract import assert_error, processed_file


def create(api: Api, supervised: dict):
    return api.client.post("/v1/fine_tuning/jobs", headers=api.headers(), json={
        "model": "ftaas-tiny", "training_file": processed_file(api),
        "method": {"type": "supervised", "supervised": supervised}})


def test_a_spin_job_records_its_rounds_and_what_auto_chose(api: Api) -> None:
    response = create(api, {"self_play": {"iterations": 3, "temperature": 0.7, "sft_epochs": 2}})
    assert response.status_code == 200, response.text
    body = response.json()["method"]["supervised"]
    assert body["self_play"] == {"iterations": 3, "beta": 0.1, "temperature": 0.7, "max_completion_tokens": None,
                                 "sft_epochs": 2}
    assert body["packing"] is False and body["rehearsal"] is False and body["stop_when_learned"] is False


def test_what_does_not_apply_to_spin_is_400_naming_the_method(api: Api) -> None:
    for supervised in ({"self_play": {}, "packing": True}, {"self_play": {}, "rehearsal": True},
                       {"self_play": {}, "adapter": {"type": "prompt_tuning"}}, {"self_play": {"iterations": 0}},
                       {"self_play": {"rounds": 2}}):
        assert_error(create(api, supervised), 400)
