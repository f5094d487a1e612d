"""The README quickstart, run verbatim (but for the port) against a live `ftaas up`."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.e2e.servers import LiveServer
from tests.test_docs import README

pytestmark = pytest.mark.slow


def test_the_quickstart_runs_as_written(embedded: LiveServer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    code = README.split("## Quickstart", 1)[1].split("```python\n", 1)[1].split("\n```", 1)[0]
    assert len(code.splitlines()) <= 22
    script = tmp_path / "quickstart.py"
    script.write_text(code.replace("http://localhost:8000/v1", embedded.base_url))
    result = subprocess.run([sys.executable, str(script)], env={**os.environ, "FTAAS_API_KEY": embedded.api_key},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # The reply is whatever a 1M-parameter model says (possibly nothing, possibly several lines): check the
    # shape of what the quickstart prints, not the words.
    assert re.search(r"^ft:ftaas-tiny:default:agents:[A-Za-z0-9]{8} -> ", result.stdout, re.M), result.stdout
    assert "The job has successfully completed" in result.stdout
