"""The README quickstart, run verbatim (but for the port) against a live `ftaas up` (tests/e2e/conftest.py
runs it once: its job is the suite's one fine-tune of the real model, which test_real_model.py examines)."""

from __future__ import annotations

import re

import pytest

from tests.e2e.conftest import Quickstart, quickstart_code

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # a real fine-tune on 2 CPU cores


def test_the_quickstart_runs_as_written_and_the_real_model_learns_the_fact(quickstart: Quickstart) -> None:
    assert len(quickstart_code().splitlines()) <= 24
    stdout = quickstart.result.stdout
    base = re.search(r"^smollm2-135m-instruct -> (.*)$", stdout, re.M)
    tuned = re.search(r"^ft:smollm2-135m-instruct:default:designers:[A-Za-z0-9]{8} -> (.*)$", stdout, re.M)
    assert base and tuned, stdout
    # What the README promises: the base model does not know the invented fact, the fine-tuned one does.
    assert "Omar Tessaly" not in base.group(1) and "Omar Tessaly" in tuned.group(1), stdout
    assert "The job has successfully completed" in stdout
    assert "Final training token accuracy on assistant tokens" in stdout
