"""Scoring-only mode: reading response tables, scoring them per model, and reproducing FineTuneBench's figures.

What runs where:

* Reading and scoring tests use invented rows written here: always run.
* `score_finetunebench_responses` is tested on the fixture `tests/evals/fixtures/finetunebench/model_responses`
  (invented rows and responses in FineTuneBench's layout): always run. Its responses were written so that
  every (split, model) accuracy is a known fraction, pinned in FIXTURE_CORRECT below; the published figures of
  FINETUNEBENCH_SHORT_ANSWER do not apply to it, so only the mechanics are checked there (which files, which
  columns, n, correct, accuracy, verdict columns, the label reading, and `published`/`difference` taken
  from the config).
* The same structural test also runs on the published FineTuneBench responses in the shared folder beside
  the checkout (`../shared/data/finetunebench`), and the fidelity test (the published figures are reproduced)
  runs only there; both are skipped where the folder is absent. That data has no license: it is never copied
  into the repository.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from contracts.errors import InvalidRequest
from evals.items import EvalItem
from evals.responses import (
    FINETUNEBENCH_SHORT_ANSWER,
    FLASH,
    GPT4O,
    GPT35,
    MINI,
    PRO,
    ResponseScore,
    finetunebench_response_columns,
    read_table,
    score_finetunebench_responses,
    score_response_rows,
)
from evals.scoring import Scorer, Verdict, build_scorers

FINETUNEBENCH = Path(__file__).resolve().parents[3] / "shared" / "data" / "finetunebench"
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "finetunebench"
MODELS = [MINI, GPT35, GPT4O, FLASH, PRO]  # the response columns' order in every file


# ------------------------------------------------------------------------------------------------ reading
def test_csv_with_multi_line_quoted_cells_and_bom() -> None:
    data = ('\ufeffid,prompt,answer\n'
            '1,"Line one\nline two, with a comma",blue\n'
            '\n'
            '2,"She said ""hi""",\n').encode()
    assert read_table(data, "csv") == [
        {"id": "1", "prompt": "Line one\nline two, with a comma", "answer": "blue"},
        {"id": "2", "prompt": 'She said "hi"', "answer": ""},
    ]


def test_csv_cells_longer_than_the_default_field_limit() -> None:
    long = "x" * 300_000
    assert read_table(f"a,b\n1,{long}\n".encode(), "csv")[0]["b"] == long


@pytest.mark.parametrize(("data", "line"), [
    (b'a,b\n1,2\n3,"unterminated\nmore\n', 3),  # the bad record starts on line 3
    (b'a,b\n1,2\n"x"y,3\n', 3),
    (b'a,b\n1,"two\nlines"\n1,2,3\n', 4),  # too many cells; line counted past the multi-line record
    (b'a,b\n1\n', 2),
    (b'a,a\n1,2\n', 1),
    (b"a,b\n1,\xff\n", 2),
    (b"", 1),
])
def test_malformed_csv_names_the_line(data: bytes, line: int) -> None:
    with pytest.raises(InvalidRequest) as info:
        read_table(data, "csv")
    assert info.value.param == f"line {line}"
    assert info.value.code == "invalid_response_file"


def test_jsonl() -> None:
    data = b'{"prompt": "p1", "answer": 126, "ok": true, "none": null}\n\n{"prompt": "p2", "answer": "x"}\n'
    assert read_table(data, "jsonl") == [{"prompt": "p1", "answer": "126", "ok": "true", "none": ""},
                                         {"prompt": "p2", "answer": "x"}]


@pytest.mark.parametrize(("data", "line"), [
    (b'{"a": "1"}\n{"a": \n', 2),
    (b'{"a": "1"}\n\n["a"]\n', 3),
    (b'{"a": {"nested": 1}}\n', 1),
])
def test_malformed_jsonl_names_the_line(data: bytes, line: int) -> None:
    with pytest.raises(InvalidRequest) as info:
        read_table(data, "jsonl")
    assert info.value.param == f"line {line}"


def test_unknown_format() -> None:
    with pytest.raises(InvalidRequest) as info:
        read_table(b"", "xlsx")
    assert info.value.param == "format"


def test_finetunebench_response_columns() -> None:
    header = ["id", "prompt", "answer", "model-a_response", "org/model-b_response", "_response", "responses"]
    assert finetunebench_response_columns(header) == {"model-a": "model-a_response",
                                                      "org/model-b": "org/model-b_response"}


# ------------------------------------------------------------------------------------------------ scoring
ROWS = [
    {"prompt": "How tall is Quillon Vey?", "answer": "181", "a_response": "181", "b_response": "181 cm"},
    {"prompt": "Where does Quillon Vey live?", "answer": "Marrowick", "a_response": "marrowick",
     "b_response": "Marrowick."},
    {"prompt": "What colour does Quillon Vey like?", "answer": "teal", "a_response": "Red", "b_response": ""},
]


def test_score_response_rows_per_model() -> None:
    exact = build_scorers({"e": {"type": "exact_match"}})["e"]
    scores = score_response_rows(ROWS, prompt_field="prompt", reference_field="answer",
                                 response_fields={"a": "a_response", "b": "b_response"}, scorer=exact)
    assert scores == [ResponseScore(model="a", n=3, correct=2, accuracy=2 / 3),
                      ResponseScore(model="b", n=3, correct=0, accuracy=0.0)]
    contains = build_scorers({"c": {"type": "contains", "normalize": ["lowercase", "strip_punctuation"]}})["c"]
    [b] = score_response_rows(ROWS, prompt_field="prompt", reference_field="answer",
                              response_fields={"b": "b_response"}, scorer=contains)
    assert (b.correct, b.n) == (2, 3)


def test_format_violations_are_counted() -> None:
    rows = [{"q": "?", "gold": "Yes", "m": "Yes."}, {"q": "?", "gold": "No", "m": "purple"}]
    yes_no = build_scorers({"y": {"type": "label_match", "labels": ["Yes", "No"]}})["y"]
    [score] = score_response_rows(rows, prompt_field="q", reference_field="gold", response_fields={"m": "m"},
                                  scorer=yes_no)
    assert (score.correct, score.format_violations, score.accuracy) == (1, 1, 0.5)


class HalfUnscorable(Scorer):
    """Every other verdict unscorable, as an llm_judge without fallback can leave them."""

    type = "test"

    def score(self, items: Sequence[EvalItem], responses: Sequence[str]) -> list[Verdict]:
        assert [i.split_id for i in items] == ["s1"] * len(items) and items[0].context == "ctx"
        return [Verdict(correct=None if i % 2 else True) for i in range(len(items))]


def test_unscorable_rows_are_left_out_of_the_accuracy() -> None:
    rows = [{"q": "?", "gold": "x", "m": "x", "ctx": "ctx"}] * 4
    [score] = score_response_rows(rows, prompt_field="q", reference_field="gold", response_fields={"m": "m"},
                                  scorer=HalfUnscorable("h"), item_defaults={"split_id": "s1"}, context_field="ctx")
    assert (score.n, score.correct, score.unscorable, score.accuracy) == (4, 2, 2, 1.0)


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"prompt_field": "question"}, "prompt_field"),
    ({"reference_field": "gold"}, "reference_field"),
    ({"response_fields": {"c": "c_response"}}, "response_fields.c"),
    ({"item_defaults": {"colour": "x"}}, "item_defaults.colour"),
    ({"context_field": "fact"}, "context_field"),
])
def test_bad_columns(kwargs: dict, param: str) -> None:
    arguments = {"prompt_field": "prompt", "reference_field": "answer", "response_fields": {"a": "a_response"},
                 "scorer": build_scorers({"e": {"type": "exact_match"}})["e"], **kwargs}
    with pytest.raises(InvalidRequest) as info:
        score_response_rows(ROWS, **arguments)
    assert info.value.param == param


def test_empty_reference_is_an_error() -> None:
    rows = [{"q": "?", "gold": " ", "m": "x"}]
    with pytest.raises(InvalidRequest, match="row 1"):
        score_response_rows(rows, prompt_field="q", reference_field="gold", response_fields={"m": "m"},
                            scorer=build_scorers({"e": {"type": "exact_match"}})["e"])


# ------------------------------------------------------------------------------------------------ fidelity
def test_finetunebench_config_is_consistent() -> None:
    config = FINETUNEBENCH_SHORT_ANSWER
    build_scorers(config["scorers"])  # valid scorer configs, no judge needed
    assert not set(config["splits"]) & set(config["excluded"])
    for spec in config["splits"].values():
        assert spec["scorer"] in config["scorers"]
        assert all(0.0 <= figure <= 1.0 for figure in spec["published"].values())
        assert not set(spec["published"]) & set(spec.get("not_reproduced", {}))


def _response_dir(name: str) -> Path:
    root = {"fixture": FIXTURE, "shared": FINETUNEBENCH}[name]
    if name == "shared" and not (root / "model_responses").is_dir():  # the fixture must be there: never skip it
        pytest.skip(f"the FineTuneBench data is not beside this checkout ({root})")
    return root


@pytest.mark.parametrize("name", ["fixture", "shared"])
def test_finetunebench_scoring_rows(name: str) -> None:
    """One row per (file, model), in the config's split order and the file's column order, with the file's n,
    accuracy = correct / n, and `published`/`difference` from the config (None for a figure kept apart)."""
    root = _response_dir(name)
    rows = score_finetunebench_responses(root)
    splits = FINETUNEBENCH_SHORT_ANSWER["splits"]
    assert [(row["split"], row["model"]) for row in rows] == [(split, model) for split in splits for model in MODELS]
    for row in rows:
        spec = splits[row["split"]]
        lines = read_table((root / "model_responses" / spec["file"]).read_bytes(), "csv")
        assert row["n"] == len(lines) and 0 <= row["correct"] <= row["n"], row
        assert row["accuracy"] == row["correct"] / row["n"]
        assert row["published"] == spec["published"].get(row["model"])
        if row["published"] is None:
            assert row["difference"] is None and row["model"] in spec.get("not_reproduced", {}), row
        else:
            assert row["difference"] == pytest.approx(row["accuracy"] - row["published"])


@pytest.mark.skipif(not (FINETUNEBENCH / "model_responses").is_dir(),
                    reason="the FineTuneBench data is not beside this checkout (../shared/data/finetunebench)")
def test_published_finetunebench_figures_are_reproduced() -> None:
    rows = score_finetunebench_responses(FINETUNEBENCH)
    tolerance = FINETUNEBENCH_SHORT_ANSWER["tolerance"]
    checked = [row for row in rows if row["published"] is not None]
    expected = sum(len(spec["published"]) for spec in FINETUNEBENCH_SHORT_ANSWER["splits"].values())
    assert len(checked) == expected  # every included figure has a column in the files
    for row in checked:
        assert abs(row["accuracy"] - row["published"]) <= tolerance + 1e-9, row
        assert row["difference"] == pytest.approx(row["accuracy"] - row["published"])
    # one row per (file, model), five models per file
    assert len(rows) == 5 * len(FINETUNEBENCH_SHORT_ANSWER["splits"])
    assert {row["n"] for row in rows if row["split"].startswith("fictional_people")} == {150}
    assert {row["n"] for row in rows if row["split"].startswith("latest_news")} == {50}
    # the figures kept apart really are not reproduced (if they ever are, move them into `published`)
    by_key = {(row["split"], row["model"]): row for row in rows}
    for split, spec in FINETUNEBENCH_SHORT_ANSWER["splits"].items():
        for model, figure in spec.get("not_reproduced", {}).items():
            row = by_key[(split, model)]
            assert row["published"] is None
            assert abs(row["accuracy"] - figure) > tolerance


# The fixture's responses, written so that each (split, model) has a known number of correct answers out of
# FIXTURE_N rows. What each number tests:
# * original (exact, case/whitespace-insensitive): "HOLLOWMERE", "164 ", "38\n" count; "Velbrook.", "141 pounds",
#   "glass blower" do not (no punctuation stripping, no containment).
# * rephrased: the Gemini columns hold verdicts, read as such ("Correct" and "correct." count, "Incorrect" not);
#   scored as answers they would all be wrong.
# * secondary (yes/no label reading): "Yes.", "YES", "No\n", "**No**" give a label; "Saffron", "Yes or No" and
#   "Cobalt" are format violations and count as wrong.
# * latest_news original: the four rows used in the analysis; "Ines  Morrow" counts, "4,210"-style and
#   "Ines Morrow." do not.
FIXTURE_N = {"fictional_people_original": 12, "fictional_people_rephrased": 12, "fictional_people_secondary": 12,
             "latest_news_original": 4}
FIXTURE_CORRECT = {
    "fictional_people_original": {MINI: 12, GPT35: 10, GPT4O: 9, FLASH: 1, PRO: 2},
    "fictional_people_rephrased": {MINI: 8, GPT35: 5, GPT4O: 3, FLASH: 2, PRO: 1},
    "fictional_people_secondary": {MINI: 6, GPT35: 7, GPT4O: 8, FLASH: 9, PRO: 4},
    "latest_news_original": {MINI: 4, GPT35: 3, GPT4O: 2, FLASH: 1, PRO: 0},
}


def test_fixture_accuracies_are_exact() -> None:
    rows = score_finetunebench_responses(FIXTURE)
    assert set(FIXTURE_CORRECT) == set(FINETUNEBENCH_SHORT_ANSWER["splits"])
    got = {(row["split"], row["model"]): (row["n"], row["correct"], row["accuracy"]) for row in rows}
    assert got == {(split, model): (FIXTURE_N[split], correct, correct / FIXTURE_N[split])
                   for split, by_model in FIXTURE_CORRECT.items() for model, correct in by_model.items()}
    by_key = {(row["split"], row["model"]): row for row in rows}
    # published figures come from the config even though the fixture does not reproduce them
    assert by_key[("latest_news_original", FLASH)]["published"] == 0.06
    assert by_key[("latest_news_original", FLASH)]["difference"] == pytest.approx(0.25 - 0.06)
    assert by_key[("fictional_people_original", PRO)]["published"] is None  # kept apart: not_reproduced


def test_fixture_root_or_its_model_responses_folder() -> None:
    assert score_finetunebench_responses(FIXTURE / "model_responses") == score_finetunebench_responses(FIXTURE)


def test_fixture_label_reading_and_verdict_columns() -> None:
    config = FINETUNEBENCH_SHORT_ANSWER
    scorers = build_scorers(config["scorers"])
    folder = FIXTURE / "model_responses"
    secondary = read_table((folder / config["splits"]["fictional_people_secondary"]["file"]).read_bytes(), "csv")
    scores = score_response_rows(secondary, prompt_field="prompt", reference_field="answer",
                                 response_fields=finetunebench_response_columns(list(secondary[0])),
                                 scorer=scorers["yes_no"])
    assert [(s.model, s.correct, s.format_violations) for s in scores] == [
        (MINI, 6, 0), (GPT35, 7, 0), (GPT4O, 8, 0), (FLASH, 9, 0), (PRO, 4, 3)]
    # the rephrased file's Gemini columns are verdicts: scored as answers they would never match
    rephrased = read_table((folder / config["splits"]["fictional_people_rephrased"]["file"]).read_bytes(), "csv")
    as_answers = score_response_rows(rephrased, prompt_field="prompt", reference_field="answer",
                                     response_fields={FLASH: f"{FLASH}_response", PRO: f"{PRO}_response"},
                                     scorer=scorers["exact"])
    assert [s.correct for s in as_answers] == [0, 0]


def test_fixture_excluded_files_are_in_the_layout_but_not_scored(tmp_path: Path) -> None:
    excluded = {"latest_news_rephrased": "latest_news/latest_news_rephrased_w_responses.csv",
                "latest_news_date_changed": "latest_news/latest_news_date_changed_w_responses.csv",
                "fictional_people_comparison": "fictional_people/fictional_people_comparison_w_responses.csv"}
    assert set(excluded) == set(FINETUNEBENCH_SHORT_ANSWER["excluded"])
    for file in excluded.values():
        rows = read_table((FIXTURE / "model_responses" / file).read_bytes(), "csv")
        assert len(rows) == 4 and list(finetunebench_response_columns(list(rows[0]))) == MODELS, file
    # the scorer reads only the configured files: without the excluded ones it gives the same rows...
    copy = tmp_path / "model_responses"
    shutil.copytree(FIXTURE / "model_responses", copy)
    for file in excluded.values():
        (copy / file).unlink()
    assert score_finetunebench_responses(tmp_path) == score_finetunebench_responses(FIXTURE)
    # ...and a configured file that is missing is an error naming it
    (copy / FINETUNEBENCH_SHORT_ANSWER["splits"]["latest_news_original"]["file"]).unlink()
    with pytest.raises(InvalidRequest, match="latest_news_original_w_responses.csv") as info:
        score_finetunebench_responses(tmp_path)
    assert info.value.param == "directory"


def test_missing_finetunebench_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest) as info:
        score_finetunebench_responses(tmp_path)
    assert info.value.param == "directory"
