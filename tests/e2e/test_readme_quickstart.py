"""The README quickstart, run verbatim (but for the port) against a live `ftaas up`."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.e2e.servers import LiveServer
from tests.test_docs import README

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # a real fine-tune on 2 CPU cores


def test_the_quickstart_runs_as_written_and_the_real_model_learns_the_fact(embedded: LiveServer, tmp_path) -> None:
    code = README.split("## Quickstart", 1)[1].split("```python\n", 1)[1].split("\n```", 1)[0]
    assert len(code.splitlines()) <= 24
    script = tmp_path / "quickstart.py"
    script.write_text(code.replace("http://localhost:8000/v1", embedded.base_url))
    result = subprocess.run([sys.executable, str(script)], env={**os.environ, "FTAAS_API_KEY": embedded.api_key},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    base = re.search(r"^smollm2-135m-instruct -> (.*)$", result.stdout, re.M)
    tuned = re.search(r"^ft:smollm2-135m-instruct:default:designers:[A-Za-z0-9]{8} -> (.*)$", result.stdout, re.M)
    assert base and tuned, result.stdout
    # What the README promises: the base model does not know the invented fact, the fine-tuned one does.
    assert "Omar Tessaly" not in base.group(1) and "Omar Tessaly" in tuned.group(1), result.stdout
    assert "The job has successfully completed" in result.stdout
    assert "Final training token accuracy on assistant tokens" in result.stdout
