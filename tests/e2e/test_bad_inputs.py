"""Golden bad inputs against a live server: each is a 4xx the SDK maps to its exception class, with a
useful message and the line number where one applies."""

from __future__ import annotations

import json

import openai
import pytest

from tests.e2e.servers import LiveServer, wait_for
from tests.factories import chat_line, training_jsonl

pytestmark = pytest.mark.slow

GOOD = chat_line("What is 2+2?", "4")


def jsonl(*rows: str) -> bytes:
    return ("\n".join(rows) + "\n").encode()


BAD_FILES = [
    ("invalid JSON line", jsonl(GOOD, GOOD, '{"messages": [', *[GOOD] * 9), 3, "not valid JSON"),
    ("non-object line", jsonl(*[GOOD] * 4, '"just a string"', *[GOOD] * 6), 5, "not an object"),
    ("missing messages", jsonl(json.dumps({"text": "hi"}), *[GOOD] * 10), 1, "no 'messages'"),
    ("unknown role", jsonl(*[GOOD] * 7, json.dumps({"messages": [{"role": "human", "content": "q"},
                                                               {"role": "assistant", "content": "a"}]}), *[GOOD] * 3),
     8, "'human'"),
    ("empty content", jsonl(GOOD, chat_line("q", ""), *[GOOD] * 9), 2, "empty content"),
    ("no assistant message", jsonl(json.dumps({"messages": [{"role": "user", "content": "q"}]}), *[GOOD] * 10), 1,
     "no assistant message"),
    ("fewer than 10 examples", jsonl(*[GOOD] * 4), None, "at least 10"),
    ("bad UTF-8", GOOD.encode() + b"\n" + b'{"messages": "caf\xe9"}\n' + jsonl(*[GOOD] * 10), 2, "UTF-8"),
]


@pytest.mark.parametrize(("case", "data", "line", "words"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_training_files_are_refused_with_their_line_number(embedded: LiveServer, case: str, data: bytes,
                                                              line: int | None, words: str) -> None:
    client = embedded.client(max_retries=0)
    file = client.files.wait_for_processing(client.files.create(file=("bad.jsonl", data), purpose="fine-tune").id,
                                            poll_interval=0.2)
    assert file.status == "error"
    assert words in file.status_details and (line is None or f"Line {line}" in file.status_details)
    with pytest.raises(openai.BadRequestError) as raised:
        client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=file.id)
    assert (raised.value.code, raised.value.param) == ("invalid_training_file", "training_file")
    assert line is None or f"Line {line}" in raised.value.message


def test_a_job_created_before_its_bad_file_is_validated_fails_with_the_line(embedded: LiveServer) -> None:
    client = embedded.client(max_retries=0)
    file = client.files.create(file=("late.jsonl", jsonl(*[GOOD] * 10, "[]")), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=file.id)  # accepted while validating
    job = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status == "failed" and j,
                   what="the job to fail")
    assert (job.error.code, job.error.param) == ("invalid_training_file", "training_file")
    assert "Line 11" in job.error.message
    assert [e.level for e in client.fine_tuning.jobs.list_events(job.id)][0] == "error"


def test_an_empty_file_is_refused_at_upload(embedded: LiveServer) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        embedded.client(max_retries=0).files.create(file=("empty.jsonl", b""), purpose="fine-tune")
    assert raised.value.code == "empty_file"


def test_an_oversized_upload_is_413(embedded: LiveServer) -> None:
    with pytest.raises(openai.APIStatusError) as raised:
        embedded.client(max_retries=0).files.create(file=("huge.jsonl", b"x" * (2 * 1024 * 1024)), purpose="fine-tune")
    assert raised.value.status_code == 413 and "larger than the limit" in raised.value.message


def test_request_errors_map_to_the_sdk_exception_classes(embedded: LiveServer, finished_job) -> None:
    client = embedded.client(max_retries=0)
    stranger = embedded.create_key("elsewhere")
    good = client.files.wait_for_processing(client.files.create(file=("ok.jsonl", training_jsonl(10)),
                                                                purpose="fine-tune").id, poll_interval=0.2)
    with pytest.raises(openai.BadRequestError) as unknown_model:
        client.fine_tuning.jobs.create(model="gpt-nonexistent", training_file=good.id)
    assert (unknown_model.value.code, unknown_model.value.param) == ("model_not_found", "model")

    with pytest.raises(openai.BadRequestError) as foreign:
        embedded.client(stranger, max_retries=0).fine_tuning.jobs.create(model="ftaas-tiny", training_file=good.id)
    assert (foreign.value.code, foreign.value.param) == ("file_not_found", "training_file")

    with pytest.raises(openai.BadRequestError) as out_of_range:
        client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=good.id,
                                       method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 99}}})
    assert out_of_range.value.param == "method.supervised.hyperparameters.n_epochs"
    assert "between 1 and 50" in out_of_range.value.message

    with pytest.raises(openai.ConflictError) as illegal:
        client.fine_tuning.jobs.cancel(finished_job.id)
    assert illegal.value.code == "invalid_state_transition" and "succeeded" in illegal.value.message
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.pause(finished_job.id)

    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-01M8CM3A5HVGYDX9KR0EW2VDM4")
    with pytest.raises(openai.AuthenticationError):
        embedded.client("sk-ftaas-not-a-key", max_retries=0).models.list()
