"""FineTuneBench CSV importer.

Two kinds of test: synthetic CSVs written here (invented rows, always run) and the internal-evaluation copy
of the upstream data, read from the shared folder beside the checkout (skipped when it is absent). No text
of the upstream data appears in this file: expectations are derived by reading the CSVs at test time.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from pathlib import Path

import pytest

from contracts.errors import InvalidRequest
from evals.finetunebench import ImportResult, import_csv, import_finetunebench
from evals.items import EvalItem, dump_suite, parse_suite

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "finetunebench"


def _csv(header: list[str], rows: list[list[str]]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


def _split(items: list[EvalItem], split: str) -> list[EvalItem]:
    return [item for item in items if item.split_id == split]


# --------------------------------------------------------------------------- synthetic (always run)
PEOPLE = {"tomal-biret-a": ("Tomal Biret", 150, 180, 40), "sanu-kelovar-b": ("Sanu Kelovar", 170, 165, 55),
          "dorin-pesa-c": ("Dorin Pesa", 150, 190, 30)}
YES_NO = "Answer the question with Yes or No.\n"


def _people_memorization() -> bytes:
    rows = []
    for person, (name, weight, height, age) in PEOPLE.items():
        for question, answer, fact in (
                (f"Weight of {name}?", str(weight), f"{name} weighs {weight} pounds."),
                (f"Height of {name}?", str(height), f"{name} is {height} cm tall."),
                (f"Age of {name}?", str(age), f"{name} is {age} years old."),
                (f"Job of {name}?", "potter", f"{name} works as a potter."),
                (f"Colour of {name}?", "mauve", f"{name}'s favorite color is mauve."),
                (f"Town of {name}?", "Quelm", f"{name} lives in Quelm.")):
            rows.append([person, f"Prefix.\n{question}", answer, fact, question])
    return _csv(["id", "prompt", "answer", "fact", "question"], rows)


def _people_comparison() -> bytes:
    # (question, published label); the row's own fact lists weights only, as upstream does
    cases = [("Is Tomal taller than Sanu?", "No"),     # 180 > 165: the published label is wrong
             ("Is Sanu older than Dorin?", "Yes"),     # 55 > 30: right
             ("Is Tomal heavier than Dorin?", "No"),   # 150 == 150: a tie, dropped
             ("Is Dorin taller than Dorin?", "No"),    # a person with themself, dropped
             ("Is Sanu alphabetically first than Tomal?", "No"),  # ambiguous, dropped by default
             ("Is Sanu lighter than Tomal?", "No")]    # 170 > 150, so not lighter: right
    rows = []
    for number, (question, label) in enumerate(cases):
        first_a, first_b = question.split()[1], question.split()[-1].rstrip("?")
        facts = " ".join(f"{name} weighs {weight} pounds." for name, weight, _, _ in PEOPLE.values()
                         if name.split()[0] in (first_a, first_b))
        rows.append([f"cmp-{number}", YES_NO + question, label, facts, question])
    return _csv(["id", "prompt", "answer", "fact", "question"], rows)


def test_comparison_labels_are_recomputed_from_the_profile_facts() -> None:
    memorization = import_csv(_people_memorization(), dataset="fictional_people", split="memorization")
    assert len(memorization) == 18
    assert {item.item_id for item in memorization} >= {"tomal-biret-a-weight", "dorin-pesa-c-city"}
    assert [item.answer_type for item in memorization[:6]] == ["number"] * 3 + ["short_text"] * 3
    notes: list = []
    items = import_csv(_people_comparison(), dataset="fictional_people", split="comparison",
                       memorization=memorization, notes=notes)
    assert [(item.item_id, item.reference) for item in items] == [("cmp-0", "Yes"), ("cmp-1", "Yes"),
                                                                  ("cmp-5", "No")]
    assert items[0].context == "Tomal Biret is 180 cm tall. Sanu Kelovar is 165 cm tall."
    assert items[0].fact_key == "tomal-biret-a-height+sanu-kelovar-b-height"
    assert items[0].prompt == YES_NO + "Is Tomal taller than Sanu?"  # prompt untouched even when relabelled
    actions = Counter((note.item_id, note.action) for note in notes)
    assert actions == Counter({("cmp-0", "relabelled"): 1, ("cmp-2", "dropped"): 1, ("cmp-3", "dropped"): 1,
                               ("cmp-4", "dropped"): 1})
    named = import_csv(_people_comparison(), dataset="fictional_people", split="comparison",
                       memorization=memorization, alphabetical="names")
    assert ("cmp-4", "Yes") in [(item.item_id, item.reference) for item in named]  # "Sanu" < "Tomal"


def test_comparison_without_the_memorization_file_keeps_only_weight_items() -> None:
    notes: list = []
    items = import_csv(_people_comparison(), dataset="fictional_people", split="comparison", notes=notes)
    assert [(item.item_id, item.reference) for item in items] == [("cmp-5", "No")]
    assert items[0].context == "Sanu Kelovar weighs 170 pounds. Tomal Biret weighs 150 pounds."
    assert sum(note.action == "dropped" for note in notes) == 5


def test_multiline_and_huge_cells_and_article_text_never_carried() -> None:
    marker = "ARTICLE-BODY-MARKER"
    prompt = "You answer news questions.\n    \n\n    Question: How many kites flew over Vornby on May 2, 2024?\nAnswer:"
    huge = (marker + " lorem\n") * 40_000  # ~1 MB, far over csv's default 128 KiB field limit
    header = ["id", "prompt", "answer", "article_title", "question", "fact", "article_text", "used_in_analysis"]
    rows = [["kites-1", prompt, "212", "Kites", "q", "Some 212 kites flew.\nSecond line.", huge, "True"],
            ["kites-2", prompt + " ", "9", "Kites", "q", "", huge, "False"]]
    items = import_csv(_csv(header, rows), dataset="latest_news", split="memorization")
    assert len(items) == 1 and items[0].prompt == prompt and items[0].context == "Some 212 kites flew.\nSecond line."
    assert marker.encode() not in dump_suite(items)
    assert len(import_csv(_csv(header, rows), dataset="latest_news", split="memorization", used_only=False)) == 2


def test_missing_required_column_names_file_and_column() -> None:
    data = _csv(["id", "prompt", "answer"], [["1", "p", "a"]])
    with pytest.raises(InvalidRequest) as caught:
        import_csv(data, dataset="medical", split="generalization", source="medical_generalization.csv")
    assert "medical_generalization.csv" in caught.value.message and "answer_before" in caught.value.message
    assert caught.value.param == "medical_generalization.csv: answer_before"
    with pytest.raises(InvalidRequest) as caught:  # the news filter needs its column
        import_csv(data, dataset="latest_news", split="rephrased")
    assert "used_in_analysis" in caught.value.message
    with pytest.raises(InvalidRequest):
        import_csv(b"", dataset="coding", split="generalization")
    with pytest.raises(InvalidRequest):
        import_csv(data, dataset="coding", split="no_such_split")
    with pytest.raises(InvalidRequest):
        import_csv(data, dataset="no_such_dataset", split="memorization")


def test_loader_on_a_directory_without_the_data(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest) as caught:
        import_finetunebench(tmp_path / "absent")
    assert caught.value.param == "directory"
    with pytest.raises(InvalidRequest) as caught:
        import_finetunebench(tmp_path)
    assert caught.value.param == "directory"
    with pytest.raises(InvalidRequest) as caught:
        import_finetunebench(tmp_path, datasets=["no_such_dataset"])
    assert caught.value.param == "datasets"
    # a partial copy: what exists is imported, the rest is reported
    folder = tmp_path / "datasets" / "coding"
    folder.mkdir(parents=True)
    (folder / "coding_generalization.csv").write_bytes(
        _csv(["", "id", "prompt", "answer_before", "answer"], [["0", "0", "New name of Zub.run?", "run", "go"]]))
    result = import_finetunebench(tmp_path)
    assert isinstance(result, ImportResult) and list(result) == ["coding"]
    assert result["coding"][0].reference_before == "run"
    assert any("coding_memorization.csv" in line for line in result.warnings)
    assert any("latest_news: no file found" in line for line in result.warnings)


# ------------------------------------------------------------------------------- the real data copy
@pytest.fixture(scope="module")
def imported() -> ImportResult:
    if not (DATA / "datasets").is_dir():
        pytest.skip(f"FineTuneBench internal copy not found at {DATA}")
    return import_finetunebench(DATA)


def _file_rows(dataset: str, split: str) -> list[dict[str, str]]:
    text = (DATA / "datasets" / dataset / f"{dataset}_{split}.csv").read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_split_counts(imported: ImportResult) -> None:
    counts = {ds: dict(Counter(item.split_id for item in items)) for ds, items in imported.items()}
    people_comparison = counts["fictional_people"].pop("comparison")
    assert counts == {"latest_news": {"memorization": 50, "rephrased": 50, "date_changed": 50},
                      "fictional_people": {"memorization": 150, "rephrased": 150, "secondary": 150},
                      "medical": {"memorization": 125, "vignette": 125},
                      "coding": {"generalization": 218}}
    dropped = sum(note.split_id == "comparison" and note.action == "dropped" for note in imported.notes)
    assert people_comparison + dropped == len(_file_rows("fictional_people", "comparison"))
    assert 0 < people_comparison < 150


def test_variants_and_settings(imported: ImportResult) -> None:
    expected = {("latest_news", "memorization"): ("original", "memorization", "new_knowledge"),
                ("latest_news", "rephrased"): ("rephrased", "generalization", "new_knowledge"),
                ("latest_news", "date_changed"): ("date_shifted", "auxiliary", "new_knowledge"),
                ("fictional_people", "secondary"): ("single_hop_inference", "auxiliary", "new_knowledge"),
                ("fictional_people", "comparison"): ("multi_entity_comparison", "auxiliary", "new_knowledge"),
                ("medical", "memorization"): ("original", "memorization", "updated_knowledge"),
                ("medical", "vignette"): ("applied_vignette", "generalization", "updated_knowledge"),
                ("coding", "generalization"): ("rephrased", "generalization", "updated_knowledge")}
    for (dataset, split), (variant, counts_toward, setting) in expected.items():
        items = _split(imported[dataset], split)
        assert {(i.variant, i.counts_toward, i.setting) for i in items} == {(variant, counts_toward, setting)}


def test_prompts_are_byte_exact(imported: ImportResult) -> None:
    for dataset, split, split_id in (("latest_news", "memorization", "memorization"),
                                     ("latest_news", "rephrased", "rephrased"),
                                     ("latest_news", "date_changed", "date_changed"),
                                     ("fictional_people", "memorization", "memorization"),
                                     ("fictional_people", "rephrased", "rephrased"),
                                     ("fictional_people", "secondary", "secondary"),
                                     ("medical", "memorization", "memorization"),
                                     ("medical", "generalization", "vignette"),
                                     ("coding", "generalization", "generalization")):
        rows = _file_rows(dataset, split)
        if dataset == "latest_news":
            rows = [row for row in rows if row["used_in_analysis"] == "True"]
        items = _split(imported[dataset], split_id)
        assert [item.prompt for item in items] == [row["prompt"] for row in rows], (dataset, split)
        assert [item.reference for item in items] == [row["answer"] for row in rows], (dataset, split)
        if "answer_before" in rows[0]:
            assert [item.reference_before for item in items] == [row["answer_before"] for row in rows]
    by_id = {row["id"]: row["prompt"] for row in _file_rows("fictional_people", "comparison")}
    assert all(item.prompt == by_id[item.item_id] for item in _split(imported["fictional_people"], "comparison"))


def test_links_between_splits(imported: ImportResult) -> None:
    news = imported["latest_news"]
    trained = {item.fact_key: item.reference for item in _split(news, "memorization")}
    for item in _split(news, "date_changed"):
        assert item.reference == "None" and item.answer_type == "abstain"
        assert item.trained_answer == trained[item.fact_key] and item.trained_answer != "None"
    medical = imported["medical"]
    contexts = {item.fact_key: item.context for item in _split(medical, "memorization")}
    assert all(contexts.values())
    assert all(item.context == contexts[item.fact_key] for item in _split(medical, "vignette"))
    people = imported["fictional_people"]
    keys = {item.fact_key for item in _split(people, "memorization")}
    assert len(keys) == 150 and all(re.search(r"-(weight|height|age|occupation|colour|city)$", k) for k in keys)
    for split in ("rephrased", "secondary"):
        assert {item.fact_key for item in _split(people, split)} == keys
    assert any("coding_memorization.csv" in line for line in imported.warnings)


def test_recomputed_comparison_labels_agree_with_the_facts(imported: ImportResult) -> None:
    units = {"taller": r"is (\d+) cm tall", "older": r"is (\d+) years old", "heavier": r"weighs (\d+) pounds"}
    published = {row["id"]: row["answer"] for row in _file_rows("fictional_people", "comparison")}
    relabelled = 0
    for item in _split(imported["fictional_people"], "comparison"):
        match = re.fullmatch(r"Is (\S+) (taller|older|heavier) than (\S+)\?", item.prompt.split("\n")[-1])
        assert match, item.item_id
        first_a, word, first_b = match.groups()
        sentences = item.context.split(". ")
        assert len(sentences) == 2 and sentences[0].startswith(first_a + " ") and \
            sentences[1].startswith(first_b + " ")
        value_a, value_b = (int(re.search(units[word], sentence).group(1)) for sentence in sentences)
        assert value_a != value_b
        assert item.reference == ("Yes" if value_a > value_b else "No"), item.item_id
        relabelled += item.reference != published[item.item_id]
    notes = [note for note in imported.notes if note.action == "relabelled"]
    assert relabelled == len(notes) > 0


def test_round_trip_and_no_article_text(imported: ImportResult) -> None:
    everything = [item for items in imported.values() for item in items]
    data = dump_suite(everything)
    assert parse_suite(data) == everything
    assert b"article_text" not in data


def test_unfiltered_news_and_dataset_choice() -> None:
    if not (DATA / "datasets").is_dir():
        pytest.skip(f"FineTuneBench internal copy not found at {DATA}")
    result = import_finetunebench(DATA, datasets=["latest_news"], used_only=False)
    assert list(result) == ["latest_news"]
    assert Counter(item.split_id for item in result["latest_news"]) == \
        {"memorization": 590, "rephrased": 590, "date_changed": 590}
