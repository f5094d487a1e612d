"""FineTuneBench CSV importer.

What runs where:

* Synthetic CSVs written here (invented rows): always run.
* The fixture `tests/evals/fixtures/finetunebench/` (invented rows in FineTuneBench's exact layout: the same
  folders, file names and column headers): always run, so CI exercises the directory importer on every
  dataset and split. The directory tests are parametrized over it (`fixture`) and over the internal-evaluation
  copy of the upstream data in the shared folder beside the checkout (`shared`,
  `../shared/data/finetunebench`), which is skipped when that folder is absent; fixture-only tests pin exact
  values known from how the fixture was written.
* With the shared copy present, one more test checks that the fixture keeps the real files' paths and headers
  and that none of the real data's text is in it.

No text of the upstream data appears in this file or in the fixture (it has no licence): expectations on the
real copy are derived by reading its CSVs at test time.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from contracts.errors import InvalidRequest
from evals.finetunebench import ImportResult, import_csv, import_finetunebench
from evals.items import EvalItem, dump_suite, parse_suite

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "finetunebench"
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "finetunebench"


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


# --------------------------------------------------------------- a FineTuneBench directory: fixture and real copy
@dataclass(frozen=True)
class Copy:
    """A directory in FineTuneBench's layout, and what importing it must give."""

    root: Path
    counts: dict[str, dict[str, int]]  # dataset -> split -> items, comparison left out (it depends on the drops)
    news_rows: int  # rows per news file, used in the analysis or not
    people_facts: int


COPIES = {
    "fixture": Copy(FIXTURE, {"latest_news": {"memorization": 4, "rephrased": 4, "date_changed": 4},
                              "fictional_people": {"memorization": 12, "rephrased": 12, "secondary": 12},
                              "medical": {"memorization": 4, "vignette": 4},
                              "coding": {"generalization": 4}}, news_rows=6, people_facts=12),
    "shared": Copy(DATA, {"latest_news": {"memorization": 50, "rephrased": 50, "date_changed": 50},
                          "fictional_people": {"memorization": 150, "rephrased": 150, "secondary": 150},
                          "medical": {"memorization": 125, "vignette": 125},
                          "coding": {"generalization": 218}}, news_rows=590, people_facts=150),
}


@pytest.fixture(scope="module", params=list(COPIES))
def source(request: pytest.FixtureRequest) -> Copy:
    found = COPIES[request.param]
    if request.param == "shared" and not (found.root / "datasets").is_dir():  # the fixture is never skipped
        pytest.skip(f"FineTuneBench internal copy not found at {found.root}")
    return found


@pytest.fixture(scope="module")
def imported(source: Copy) -> ImportResult:
    return import_finetunebench(source.root)


def _file_rows(root: Path, dataset: str, split: str) -> list[dict[str, str]]:
    text = (root / "datasets" / dataset / f"{dataset}_{split}.csv").read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_split_counts(source: Copy, imported: ImportResult) -> None:
    counts = {ds: dict(Counter(item.split_id for item in items)) for ds, items in imported.items()}
    people_comparison = counts["fictional_people"].pop("comparison")
    assert counts == source.counts
    dropped = sum(note.split_id == "comparison" and note.action == "dropped" for note in imported.notes)
    rows = len(_file_rows(source.root, "fictional_people", "comparison"))
    assert people_comparison + dropped == rows
    assert 0 < people_comparison < rows


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


def test_prompts_are_byte_exact(source: Copy, imported: ImportResult) -> None:
    for dataset, split, split_id in (("latest_news", "memorization", "memorization"),
                                     ("latest_news", "rephrased", "rephrased"),
                                     ("latest_news", "date_changed", "date_changed"),
                                     ("fictional_people", "memorization", "memorization"),
                                     ("fictional_people", "rephrased", "rephrased"),
                                     ("fictional_people", "secondary", "secondary"),
                                     ("medical", "memorization", "memorization"),
                                     ("medical", "generalization", "vignette"),
                                     ("coding", "generalization", "generalization")):
        rows = _file_rows(source.root, dataset, split)
        if dataset == "latest_news":
            rows = [row for row in rows if row["used_in_analysis"] == "True"]
        items = _split(imported[dataset], split_id)
        assert [item.prompt for item in items] == [row["prompt"] for row in rows], (dataset, split)
        assert [item.reference for item in items] == [row["answer"] for row in rows], (dataset, split)
        if "answer_before" in rows[0]:
            assert [item.reference_before for item in items] == [row["answer_before"] for row in rows]
    by_id = {row["id"]: row["prompt"] for row in _file_rows(source.root, "fictional_people", "comparison")}
    assert all(item.prompt == by_id[item.item_id] for item in _split(imported["fictional_people"], "comparison"))


def test_links_between_splits(source: Copy, imported: ImportResult) -> None:
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
    assert len(keys) == source.people_facts
    assert all(re.search(r"-(weight|height|age|occupation|colour|city)$", key) for key in keys)
    for split in ("rephrased", "secondary"):
        assert {item.fact_key for item in _split(people, split)} == keys
    assert any("coding_memorization.csv" in line for line in imported.warnings)


# relation -> (the fact sentence's value, True when "A <relation> than B" means A's value is the larger)
_RELATIONS = {"taller": (r"is (\d+) cm tall", True), "shorter": (r"is (\d+) cm tall", False),
              "older": (r"is (\d+) years old", True), "younger": (r"is (\d+) years old", False),
              "heavier": (r"weighs (\d+) pounds", True), "lighter": (r"weighs (\d+) pounds", False)}


def test_recomputed_comparison_labels_agree_with_the_facts(source: Copy, imported: ImportResult) -> None:
    published = {row["id"]: row["answer"] for row in _file_rows(source.root, "fictional_people", "comparison")}
    relabelled = 0
    for item in _split(imported["fictional_people"], "comparison"):
        match = re.fullmatch(r"Is (\S+) (\w+) than (\S+)\?", item.prompt.split("\n")[-1])
        assert match and match[2] in _RELATIONS, item.item_id
        first_a, word, first_b = match.groups()
        sentences = item.context.split(". ")
        assert len(sentences) == 2 and sentences[0].startswith(first_a + " ") and \
            sentences[1].startswith(first_b + " ")
        unit, larger = _RELATIONS[word]
        value_a, value_b = (int(re.search(unit, sentence).group(1)) for sentence in sentences)
        assert value_a != value_b
        assert item.reference == ("Yes" if (value_a > value_b) == larger else "No"), item.item_id
        relabelled += item.reference != published[item.item_id]
    notes = [note for note in imported.notes if note.action == "relabelled"]
    assert relabelled == len(notes) > 0


def test_round_trip_and_no_article_text(imported: ImportResult) -> None:
    everything = [item for items in imported.values() for item in items]
    data = dump_suite(everything)
    assert parse_suite(data) == everything
    assert b"article_text" not in data


def test_unfiltered_news_and_dataset_choice(source: Copy) -> None:
    result = import_finetunebench(source.root, datasets=["latest_news"], used_only=False)
    assert list(result) == ["latest_news"]
    assert Counter(item.split_id for item in result["latest_news"]) == \
        {"memorization": source.news_rows, "rephrased": source.news_rows, "date_changed": source.news_rows}


# ------------------------------------------------------------------ the fixture: values known by construction
# The fixture (tests/evals/fixtures/finetunebench, invented rows) holds two people with six facts each, a third
# person named only in one comparison, six news items of which four are used in the analysis, four medical
# updates (vignettes in the id order 2, 0, 3, 1) and four coding renames. See its README.
MARLA, ODRIC, TOBIN = "marla-quintessa-vbk", "odric-falloway-tzm", "tobin-harrowgate-qqd"
SHORT = "Reply with just a number, a word or a short phrase.\n"
NEWS_USED = ["velbrook-opens-a-floating-library-kpw", "hollowmere-council-elects-pell-ardwyn-mzt",
             "starling-rail-reaches-corriby-fjd", "tidewater-orchestra-picks-conductor-hyl"]
NEWS_UNUSED = ["dunmarrow-kite-festival-breaks-rwe", "elsworth-quarry-museum-closes-bnx"]


@pytest.fixture(scope="module")
def fixture_import() -> ImportResult:
    return import_finetunebench(FIXTURE)


def _by_id(items: list[EvalItem], split: str) -> dict[str, EvalItem]:
    return {item.item_id: item for item in _split(items, split)}


def test_fixture_fictional_people_items(fixture_import: ImportResult) -> None:
    people = fixture_import["fictional_people"]
    memorization = _by_id(people, "memorization")
    assert list(memorization) == [f"{person}-{attribute}" for person in (MARLA, ODRIC)
                                  for attribute in ("weight", "height", "age", "occupation", "colour", "city")]
    assert memorization[f"{MARLA}-weight"] == EvalItem(
        dataset_id="fictional_people", setting="new_knowledge", split_id="memorization", variant="original",
        counts_toward="memorization", item_id=f"{MARLA}-weight",
        prompt=SHORT + "What does Marla Quintessa weigh in pounds?", reference="141",
        context="Marla Quintessa weighs 141 pounds.", fact_key=f"{MARLA}-weight", answer_type="number")
    # "works as an ...", and the British spelling "favourite colour", are read as well
    assert (memorization[f"{ODRIC}-occupation"].reference, memorization[f"{ODRIC}-occupation"].answer_type) == \
        ("archivist", "short_text")
    assert memorization[f"{ODRIC}-colour"].context == "Odric Falloway's favourite colour is cobalt."
    assert [item.answer_type for item in memorization.values()] == (["number"] * 3 + ["short_text"] * 3) * 2
    rephrased = _by_id(people, "rephrased")[f"{ODRIC}-age"]
    assert (rephrased.prompt, rephrased.reference, rephrased.answer_type, rephrased.fact_key) == \
        (SHORT + "How many years old is Odric?", "38", "number", f"{ODRIC}-age")
    secondary = _by_id(people, "secondary")
    assert [item.reference for item in secondary.values()] == ["No", "Yes", "Yes", "Yes", "No", "No",
                                                              "Yes", "No", "No", "No", "Yes", "Yes"]
    assert {item.answer_type for item in secondary.values()} == {"yes_no"}
    assert secondary[f"{MARLA}-height"].context == "Marla Quintessa is 172 cm tall."
    assert not any(note.action == "keyed_by_position" for note in fixture_import.notes)


def test_fixture_comparison_labels_and_notes(fixture_import: ImportResult) -> None:
    comparison = _split(fixture_import["fictional_people"], "comparison")
    assert [(item.item_id, item.reference, item.fact_key) for item in comparison] == [
        (f"{MARLA}-{ODRIC}-height", "Yes", f"{MARLA}-height+{ODRIC}-height"),   # published Yes: kept
        (f"{MARLA}-{ODRIC}-weight", "No", f"{MARLA}-weight+{ODRIC}-weight"),   # published Yes: relabelled
        (f"{ODRIC}-{MARLA}-weight", "No", f"{ODRIC}-weight+{MARLA}-weight"),   # "lighter"
        (f"{ODRIC}-{MARLA}-height", "Yes", f"{ODRIC}-height+{MARLA}-height"),  # "shorter"
    ]
    assert comparison[0].context == "Marla Quintessa is 172 cm tall. Odric Falloway is 164 cm tall."
    assert comparison[0].prompt == "Reply Yes or No only.\nIs Marla taller than Odric?"
    assert {item.answer_type for item in comparison} == {"yes_no"}
    assert Counter((note.item_id, note.action) for note in fixture_import.notes) == Counter({
        (f"{MARLA}-{ODRIC}-weight", "relabelled"): 1,
        (f"{MARLA}-{ODRIC}-age", "dropped"): 1,      # a tie: both 38
        (f"{ODRIC}-{ODRIC}-height", "dropped"): 1,   # a person with themself
        (f"{MARLA}-{ODRIC}-city", "dropped"): 1,     # "alphabetically first"
        (f"{TOBIN}-{MARLA}-age", "dropped"): 1})     # Tobin has no profile
    assert fixture_import.warnings == [
        "fictional_people/comparison: 4 item(s) dropped (see notes)",
        "fictional_people/comparison: 1 item(s) relabelled (see notes)",
        ("coding: coding_memorization.csv is not available; only the generalization split is imported, so "
         "this dataset has nothing to train on")]
    named = import_finetunebench(FIXTURE, datasets=["fictional_people"], alphabetical="names")
    kept = [(item.item_id, item.reference) for item in _split(named["fictional_people"], "comparison")]
    assert len(kept) == 5 and kept[2] == (f"{MARLA}-{ODRIC}-city", "Yes")  # "Marla" < "Odric"


def test_fixture_news_items(fixture_import: ImportResult) -> None:
    news = fixture_import["latest_news"]
    for split in ("memorization", "rephrased", "date_changed"):
        assert list(_by_id(news, split)) == NEWS_USED, split
    shifted = _by_id(news, "date_changed")[NEWS_USED[0]]
    assert shifted == EvalItem(
        dataset_id="latest_news", setting="new_knowledge", split_id="date_changed", variant="date_shifted",
        counts_toward="auxiliary", item_id=NEWS_USED[0],
        prompt="\nYou answer questions about recent events.\nGive only the answer, or None if no such event "
               "happened.\n\nQuestion: How many boats make up the floating library that opened in Velbrook on "
               "March 3, 2032?\nAnswer:",
        reference="None", context="The library, 12 linked boats moored off the east pier, opened to readers on "
                                  "Monday.", fact_key=NEWS_USED[0], answer_type="abstain", trained_answer="12")
    assert [item.trained_answer for item in _split(news, "date_changed")] == \
        ["12", "Pell Ardwyn", "Corriby", "Ines Morrow"]
    assert {item.answer_type for item in _split(news, "rephrased")} == {"short_text"}
    unfiltered = import_finetunebench(FIXTURE, datasets=["latest_news"], used_only=False)["latest_news"]
    assert list(_by_id(unfiltered, "memorization")) == [NEWS_USED[0], NEWS_UNUSED[0], *NEWS_USED[1:3],
                                                        NEWS_UNUSED[1], NEWS_USED[3]]
    assert _by_id(unfiltered, "date_changed")[NEWS_UNUSED[0]].trained_answer == "4,210"


def test_fixture_medical_and_coding_items(fixture_import: ImportResult) -> None:
    medical = fixture_import["medical"]
    memorization = _by_id(medical, "memorization")
    assert list(memorization) == ["0", "1", "2", "3"]
    assert memorization["2"].prompt == 'What is the first-line agent for "Merrow fever" in children?'
    assert (memorization["2"].reference_before, memorization["2"].reference) == ("Quellamycin", "Ostravir")
    assert memorization["2"].context == ("Old guidance: quellamycin was first-line for Merrow fever in children. "
                                         "New guidance: ostravir is first-line.")
    assert {item.answer_type for item in medical} == {"free_text"}
    vignettes = _by_id(medical, "vignette")
    assert list(vignettes) == ["2", "0", "3", "1"]  # file order; the unnamed index column (0..3) is not the id
    assert vignettes["2"].prompt == ("A 6-year-old girl has had Merrow fever for three days.\nShe has no "
                                     "allergies. Which drug should be started?")
    assert all(item.context == memorization[item.item_id].context for item in vignettes.values())  # by id
    assert vignettes["0"].reference_before == "Keep taking zorvalin; there is no need to stop"
    coding = fixture_import["coding"]
    assert [(item.item_id, item.reference_before, item.reference, item.answer_type) for item in coding] == [
        ("0", "load_conf", "read_config", "short_text"), ("1", "dump_table", "save_table", "short_text"),
        ("2", "n_jobs", "workers", "short_text"), ("3", "FastCache", "brindle.cache.LRU", "short_text")]


def test_fixture_dataset_choice_and_layouts(fixture_import: ImportResult, tmp_path: Path) -> None:
    chosen = import_finetunebench(FIXTURE, datasets=["coding", "medical", "coding"])
    assert list(chosen) == ["coding", "medical"] and chosen["medical"] == fixture_import["medical"]
    # <root>/<dataset>/... and the CSVs directly in <root> import the same
    assert dict(import_finetunebench(FIXTURE / "datasets")) == dict(fixture_import)
    for path in (FIXTURE / "datasets").rglob("*.csv"):
        shutil.copy(path, tmp_path / path.name)
    flat = import_finetunebench(tmp_path)
    assert dict(flat) == dict(fixture_import) and flat.warnings == fixture_import.warnings
    (tmp_path / "coding_memorization.csv").write_text("id,prompt,answer\n", encoding="utf-8")
    assert any("coding_memorization.csv is present but not imported" in line
               for line in import_finetunebench(tmp_path).warnings)


# ----------------------------------------------------------------------------- the fixture against the real copy
def _csv_files(root: Path) -> dict[str, list[list[str]]]:
    return {path.relative_to(root).as_posix(): list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"),
                                                                           newline="")))
            for root_dir in ("datasets", "model_responses") for path in sorted((root / root_dir).rglob("*.csv"))}


@pytest.mark.skipif(not (DATA / "datasets").is_dir(), reason=f"FineTuneBench internal copy not found at {DATA}")
def test_fixture_has_the_real_layout_and_none_of_its_text() -> None:
    fixture, real = _csv_files(FIXTURE), _csv_files(DATA)
    assert sorted(fixture) == sorted(real)  # the same files, by path
    assert {name: rows[0] for name, rows in fixture.items()} == {name: rows[0] for name, rows in real.items()}
    # Licence guard: no cell of 12 characters or more, and no line of 20 or more, is taken from the real data.
    real_cells = {cell for rows in real.values() for row in rows[1:] for cell in row}
    real_text = "\n".join(real_cells)
    for name, rows in fixture.items():
        for row in rows[1:]:
            for cell in row:
                assert len(cell.strip()) < 12 or cell not in real_cells, (name, cell)
                assert not any(len(line) >= 20 and line in real_text for line in cell.split("\n")), (name, cell)
