"""`ftaas eval` commands that need no server: suites, the FineTuneBench importer and scoring-only mode,
and a report's table; run as a user runs them (subprocesses), on data that ships with the tests (and on
FineTuneBench's own where it is beside the checkout)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from evals.items import parse_suite
from evals.run import EvalRun

#: FineTuneBench's layout with invented rows (tests/evals/fixtures/finetunebench/README.md), always here; and
#: the published data where it sits beside the checkout (no licence: never copied into the repository).
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "finetunebench"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "finetunebench"


def finetunebench_directory(which: str) -> Path:
    if which == "fixture":
        return FIXTURE
    if not (SHARED / "model_responses").is_dir():
        pytest.skip("the FineTuneBench data is not beside this checkout (the fixture runs the same commands)")
    return SHARED


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


@pytest.mark.parametrize("directory", ["fixture", "shared"])
def test_scoring_only_mode_prints_our_figures_beside_the_published_ones(directory: str) -> None:
    """On the fixture (invented responses) the command prints a row per split and model; on FineTuneBench's
    own responses, where they are beside the checkout, its figures reproduce the paper's within 0.02."""
    data = finetunebench_directory(directory)
    result = ftaas_eval("score-responses", "--finetunebench", str(data))
    assert result.returncode == 0, result.stderr
    assert "rephrased" in result.stdout and "gpt-4o-mini-2024-07-18" in result.stdout
    if directory == "shared":
        worst = float(result.stderr.strip().rsplit(" ", 1)[-1])
        assert worst <= 0.02 + 1e-9


@pytest.mark.parametrize("directory", ["fixture", "shared"])
def test_the_importer_writes_suite_files_that_load_back(tmp_path: Path, directory: str) -> None:
    data = finetunebench_directory(directory)
    result = ftaas_eval("import-finetunebench", str(data), "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    people = parse_suite((tmp_path / "fictional_people.jsonl").read_bytes())
    with (data / "datasets" / "fictional_people" / "fictional_people_memorization.csv").open(encoding="utf-8") as f:
        rows = sum(1 for _ in csv.DictReader(f))
    assert sum(i.split_id == "memorization" for i in people) == rows
    assert (tmp_path / "fictional_people.train.jsonl").exists()
    assert not (tmp_path / "coding.train.jsonl").exists()  # the coding memorization file is not public
    assert "coding" in result.stderr


def test_a_reports_table_has_every_split_and_the_headlines(tmp_path: Path) -> None:
    """A report made here (scripted answers through the eval runner) printed by `ftaas eval table`."""
    from tests.evals.test_runner import ScriptedModels, builtin_spec

    spec, items, controls = builtin_spec()
    report, _ = EvalRun(spec, items, controls, ScriptedModels(items + controls), base_model="base",
                        tuned_model="tuned").execute()
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    result = ftaas_eval("table", str(path))
    assert result.returncode == 0, result.stderr
    splits = [f"{d['dataset_id']}/{d['split_id']}" for d in report["splits"]]
    for text in (*splits, "HEADLINE memorization", "HEADLINE generalization", "FORGETTING"):
        assert text in result.stdout
