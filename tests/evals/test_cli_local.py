"""`ftaas eval` commands that need no server: suites, the FineTuneBench importer and scoring-only mode,
and a report's table; run as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evals.items import parse_suite

FINETUNEBENCH = Path(__file__).resolve().parents[3] / "shared" / "data" / "finetunebench"
EXAMPLE_REPORT = Path(__file__).resolve().parents[3] / "shared" / "reference" / "evals" / "example_eval_report.json"


def ftaas_eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftaas.cli", "eval", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_a_suite_and_its_training_file_are_written_deterministically(tmp_path: Path) -> None:
    first, second, train = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "train.jsonl"
    for path in (first, second):
        result = ftaas_eval("suite", "api_renames", "--seed", "4", "--size", "5", "-o", str(path),
                            "--training-file", str(train))
        assert result.returncode == 0, result.stderr
    assert first.read_bytes() == second.read_bytes()
    items = parse_suite(first.read_bytes())
    memorization = [i for i in items if i.counts_toward == "memorization"]
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    assert [r["messages"][1]["content"] for r in rows] == [i.reference for i in memorization]
    assert "fictional_people" in ftaas_eval("suites").stdout
    unknown = ftaas_eval("suite", "nope", "-o", str(tmp_path / "x.jsonl"))
    assert unknown.returncode != 0 and "nope" in unknown.stderr


@pytest.mark.skipif(not FINETUNEBENCH.is_dir(), reason="the FineTuneBench data is not beside this checkout")
def test_scoring_only_mode_prints_the_published_figures_beside_ours() -> None:
    result = ftaas_eval("score-responses", "--finetunebench", str(FINETUNEBENCH))
    assert result.returncode == 0, result.stderr
    assert "people_rephrased" in result.stdout or "rephrased" in result.stdout
    worst = float(result.stderr.strip().rsplit(" ", 1)[-1])
    assert worst <= 0.02 + 1e-9


@pytest.mark.skipif(not FINETUNEBENCH.is_dir(), reason="the FineTuneBench data is not beside this checkout")
def test_the_importer_writes_suite_files_that_load_back(tmp_path: Path) -> None:
    result = ftaas_eval("import-finetunebench", str(FINETUNEBENCH), "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    people = parse_suite((tmp_path / "fictional_people.jsonl").read_bytes())
    assert sum(i.split_id == "memorization" for i in people) == 150
    assert (tmp_path / "fictional_people.train.jsonl").exists()
    assert not (tmp_path / "coding.train.jsonl").exists()  # the coding memorization file is not public
    assert "coding" in result.stderr


@pytest.mark.skipif(not EXAMPLE_REPORT.exists(), reason="the reference example report is not beside this checkout")
def test_a_reports_table_has_every_split_and_the_headlines() -> None:
    result = ftaas_eval("table", str(EXAMPLE_REPORT))
    assert result.returncode == 0, result.stderr
    for text in ("latest_news/memorization", "latest_news/date_changed", "control/general_knowledge_control",
                 "HEADLINE memorization", "HEADLINE generalization", "FORGETTING"):
        assert text in result.stdout
