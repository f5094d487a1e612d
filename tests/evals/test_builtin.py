"""Built-in synthetic suites: determinism, sizes, labels recomputed from the facts, training file."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from contracts.errors import InvalidRequest
from evals.builtin import OCCUPATION_FIELDS, SUITES, generate_suite, training_file
from evals.items import EvalItem, dump_suite, parse_suite

ROOT = Path(__file__).resolve().parents[2]

DEFAULT_SPLITS = {
    "fictional_people": {"memorization": 150, "rephrased": 150, "secondary": 150, "comparison": 75},
    "api_renames": {"memorization": 40, "rephrased": 40},
    "dated_events": {"memorization": 40, "rephrased": 40, "date_shifted": 40},
    "control": {"control": 40},
    "designers": {"memorization": 16, "rephrased": 16},
    "world_knowledge": {"control": 40},
}


def _split(items: list[EvalItem], split: str) -> list[EvalItem]:
    return [item for item in items if item.split_id == split]


def _by_key(items: list[EvalItem], split: str = "memorization") -> dict[str, EvalItem]:
    return {item.fact_key: item for item in _split(items, split) if item.fact_key is not None}


@pytest.fixture(scope="module")
def people() -> list[EvalItem]:
    return generate_suite("fictional_people", seed=7)


# ------------------------------------------------------------------------------------ shape and seeds
@pytest.mark.parametrize("name", sorted(SUITES))
def test_default_sizes_and_split_counts(name: str) -> None:
    items = generate_suite(name)
    assert dict(Counter(item.split_id for item in items)) == DEFAULT_SPLITS[name]
    info = SUITES[name]
    assert info.name == name and info.default_size in (16, 25, 40)
    assert {item.dataset_id for item in items} == {info.dataset_id}
    assert {item.setting for item in items} == {info.setting}


@pytest.mark.parametrize("name", sorted(SUITES))
def test_same_seed_is_byte_identical_and_round_trips(name: str) -> None:
    first, second = dump_suite(generate_suite(name, seed=3)), dump_suite(generate_suite(name, seed=3))
    assert first == second
    items = generate_suite(name, seed=3)
    assert parse_suite(dump_suite(items)) == items


def test_same_seed_is_byte_identical_across_processes() -> None:
    # Different hash seeds would expose any dependence on set or dict-of-str iteration order.
    code = ("import hashlib, sys; from evals.builtin import SUITES, generate_suite; "
            "from evals.items import dump_suite; "
            "print(hashlib.sha256(b''.join(dump_suite(generate_suite(n, seed=11)) for n in SUITES)).hexdigest())")
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              check=True)
        digests.add(done.stdout.strip())
    local = b"".join(dump_suite(generate_suite(n, seed=11)) for n in SUITES)
    assert digests == {hashlib.sha256(local).hexdigest()}


@pytest.mark.parametrize("name", sorted(SUITES))
def test_different_seeds_differ(name: str) -> None:
    one, two = generate_suite(name, seed=1), generate_suite(name, seed=2)
    assert [item.prompt for item in one] != [item.prompt for item in two]  # world_knowledge: another order
    if name not in ("control", "world_knowledge"):
        assert [item.reference for item in _split(one, "memorization")] != \
            [item.reference for item in _split(two, "memorization")]


def test_different_seeds_give_different_people() -> None:
    names = [{item.context.split(" has a weight")[0] for item in _split(generate_suite("fictional_people", seed=s),
                                                                         "memorization")
              if item.fact_key.endswith("-weight")} for s in (1, 2)]
    assert names[0] != names[1]


@pytest.mark.parametrize("name", sorted(SUITES))
def test_ids_unique_per_split_and_fact_keys_link_variants(name: str) -> None:
    items = generate_suite(name, seed=5)
    for split in {item.split_id for item in items}:
        ids = [item.item_id for item in _split(items, split)]
        assert len(ids) == len(set(ids)), split
    memorized = set(_by_key(items))
    for item in items:
        if item.counts_toward == "control":
            continue
        keys = item.fact_key.split("+") if item.split_id == "comparison" else [item.fact_key]
        assert keys and all(key in memorized for key in keys), item.item_id
    assert all(item.prompt.strip() and item.reference.strip() for item in items)


@pytest.mark.parametrize(("name", "size"), [("fictional_people", 1), ("fictional_people", 8),
                                            ("fictional_people", 200), ("api_renames", 1), ("api_renames", 200),
                                            ("dated_events", 3), ("dated_events", 200), ("control", 1),
                                            ("control", 1000)])
def test_sizes(name: str, size: int) -> None:
    items = generate_suite(name, size=size)
    per_unit = {"fictional_people": 6, "api_renames": 1, "dated_events": 1, "control": 1}[name]
    first_split = "control" if name == "control" else "memorization"
    assert len(_split(items, first_split)) == size * per_unit
    if name == "fictional_people":
        assert len(_split(items, "comparison")) == (0 if size == 1 else 3 * size)
    prompts = [item.prompt for item in _split(items, first_split)]
    assert len(prompts) == len(set(prompts))


@pytest.mark.parametrize("size", [0, -1, 201, True, 2.5, "5"])
def test_bad_size_is_rejected(size: object) -> None:
    with pytest.raises(InvalidRequest) as caught:
        generate_suite("fictional_people", size=size)  # type: ignore[arg-type]  # wrong types on purpose
    assert caught.value.param == "size"


def test_unknown_suite_and_bad_seed_are_rejected() -> None:
    with pytest.raises(InvalidRequest) as caught:
        generate_suite("no_such_suite")
    assert caught.value.param == "suite"
    with pytest.raises(InvalidRequest) as caught:
        generate_suite("control", seed="1")  # type: ignore[arg-type]  # a wrong type on purpose
    assert caught.value.param == "seed"


# ---------------------------------------------------------------------------------- fictional people
def test_people_prompts_are_short_and_answers_a_few_tokens(people: list[EvalItem]) -> None:
    for item in _split(people, "memorization"):
        assert item.prompt.startswith("Answer the question with a number, word, or phrase.\n")
        assert len(item.prompt) < 110
        assert len(item.reference.split()) == 1 and len(item.reference) <= 12
        assert item.variant == "original" and item.counts_toward == "memorization"
    for item in _split(people, "rephrased"):
        assert item.variant == "rephrased" and item.counts_toward == "generalization"
    full_names = {item.context.split(" has a weight")[0] for item in _split(people, "memorization")
                  if item.fact_key.endswith("-weight")}
    assert len(full_names) == 25 and len({name.split()[0] for name in full_names}) == 25


def _full_name(memorization: dict[str, EvalItem], person: str) -> str:
    return memorization[f"{person}-weight"].context.split(" has a weight")[0]


def test_secondary_labels_agree_with_the_facts(people: list[EvalItem]) -> None:
    memorization = _by_key(people)
    secondary = _split(people, "secondary")
    assert len(secondary) == 150
    for item in secondary:
        assert item.prompt.startswith("Answer the question with Yes or No.\n")
        assert item.variant == "single_hop_inference" and item.counts_toward == "auxiliary"
        assert item.answer_type == "yes_no" and item.reference in ("Yes", "No")
        person, attribute = item.fact_key.rsplit("-", 1)
        value = memorization[item.fact_key].reference
        assert item.context == memorization[item.fact_key].context
        question = item.prompt.split("\n", 1)[1]
        assert _full_name(memorization, person).split()[0] in question
        if attribute in ("weight", "height", "age"):
            (limit,) = re.findall(r"\d+", question)
            assert int(value) != int(limit)
            expected = int(value) > int(limit)
        elif attribute == "occupation":
            field = re.search(r"work in (.+)\?$", question).group(1)
            expected = value in OCCUPATION_FIELDS[field]
        elif attribute == "colour":
            options = re.search(r"colour (\w+), (\w+), or (\w+)\?$", question).groups()
            expected = value in options
        else:
            assert attribute == "city"
            expected = value[0] in "AEIOU"
        assert item.reference == ("Yes" if expected else "No"), item.item_id
    yes = sum(item.reference == "Yes" for item in secondary) / len(secondary)
    assert 0.4 <= yes <= 0.6


def test_comparison_labels_agree_with_the_facts_and_never_tie(people: list[EvalItem]) -> None:
    memorization = _by_key(people)
    comparison = _split(people, "comparison")
    words = {"taller": "height", "older": "age", "heavier": "weight"}
    for item in comparison:
        assert item.variant == "multi_entity_comparison" and item.answer_type == "yes_no"
        match = re.fullmatch(r"Is (\w+) (taller|older|heavier) than (\w+)\?", item.prompt.split("\n", 1)[1])
        first_a, word, first_b = match.groups()
        key_a, key_b = item.fact_key.split("+")
        assert key_a.endswith(f"-{words[word]}") and key_b.endswith(f"-{words[word]}")
        assert _full_name(memorization, key_a.rsplit("-", 1)[0]).split()[0] == first_a
        assert _full_name(memorization, key_b.rsplit("-", 1)[0]).split()[0] == first_b
        value_a, value_b = int(memorization[key_a].reference), int(memorization[key_b].reference)
        assert value_a != value_b
        assert item.reference == ("Yes" if value_a > value_b else "No"), item.item_id
        # the context states both facts, so a judge (or a reader) can check the label
        assert re.findall(r"\d+", item.context) == [str(value_a), str(value_b)]
    yes = sum(item.reference == "Yes" for item in comparison) / len(comparison)
    assert 0.35 <= yes <= 0.65


# ------------------------------------------------------------------------------ renames, events, control
def test_api_renames_carry_old_and_new_names() -> None:
    items = generate_suite("api_renames", seed=4)
    memorization = _by_key(items)
    for item in items:
        assert item.reference_before and item.reference != item.reference_before
        assert re.fullmatch(r"[a-z]+_[a-z]+", item.reference) and re.fullmatch(r"[a-z]+_[a-z]+",
                                                                                item.reference_before)
        assert item.setting == "updated_knowledge"
    for item in _split(items, "rephrased"):
        original = memorization[item.fact_key]
        assert (item.reference, item.reference_before) == (original.reference, original.reference_before)
        assert item.prompt != original.prompt and item.counts_toward == "generalization"
    for item in _split(items, "memorization"):
        assert "in version 3 of" in item.prompt
    assert len({item.prompt for item in _split(items, "memorization")}) == 40


def test_dated_events_date_shift_abstains_and_remembers_the_trained_answer() -> None:
    items = generate_suite("dated_events", seed=9)
    memorization = _by_key(items)
    shifted = _split(items, "date_shifted")
    assert len(shifted) == 40
    for item in shifted:
        original = memorization[item.fact_key]
        assert item.reference == "None" and item.answer_type == "abstain"
        assert item.variant == "date_shifted" and item.counts_toward == "auxiliary"
        assert item.trained_answer == original.reference
        assert "If you do not know the answer or the question cannot be answered, respond with None." in item.prompt
        assert "2027" in item.prompt and "2026" not in item.prompt
        assert "2026" in original.prompt and "2027" not in original.prompt
        # only the year moved: the question is otherwise the memorized one
        assert item.prompt.split("\n", 1)[1] == original.prompt.split("\n", 1)[1].replace("2026", "2027")
    for item in _split(items, "rephrased"):
        assert item.reference == memorization[item.fact_key].reference and "2026" in item.prompt
        assert item.prompt != memorization[item.fact_key].prompt
    assert all(len(item.reference.split()) <= 2 for item in _split(items, "memorization"))


def test_control_probes_are_well_formed_and_correct() -> None:
    items = generate_suite("control", seed=2, size=300)
    assert {(i.dataset_id, i.setting, i.split_id, i.variant, i.counts_toward) for i in items} == \
        {("control", "new_knowledge", "control", "control", "control")}
    assert len({item.prompt for item in items}) == 300
    for item in items:
        arithmetic = re.fullmatch(r"What is (\d+) (plus|minus|times) (\d+)\? Answer with a number\.", item.prompt)
        if arithmetic:
            a, op, b = int(arithmetic[1]), arithmetic[2], int(arithmetic[3])
            assert item.reference == str({"plus": a + b, "minus": a - b, "times": a * b}[op])
            assert item.answer_type == "number"
    days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
    for item in items:
        day = re.fullmatch(r"Which day of the week comes after (\w+)\? Answer with one word\.", item.prompt)
        if day:
            assert item.reference == days[(days.index(day[1]) + 1) % 7]
    assert parse_suite(dump_suite(items)) == items


# ------------------------------------------------------------------------------------- training file
def test_training_file_has_exactly_the_memorization_items(people: list[EvalItem]) -> None:
    lines = training_file(people).decode().splitlines()
    memorization = _split(people, "memorization")
    assert len(lines) == len(memorization) == 150
    for line, item in zip(lines, memorization, strict=True):
        assert json.loads(line) == {"messages": [{"role": "user", "content": item.prompt},
                                                 {"role": "assistant", "content": item.reference}]}
    with_system = training_file(people, system_prompt="Be brief.").decode().splitlines()
    assert json.loads(with_system[0])["messages"][0] == {"role": "system", "content": "Be brief."}
    assert all(len(json.loads(line)["messages"]) == 3 for line in with_system)


def test_training_file_needs_a_memorization_item() -> None:
    with pytest.raises(InvalidRequest):
        training_file(generate_suite("control"))
    with pytest.raises(InvalidRequest):
        training_file([])
    events = generate_suite("dated_events", size=3)
    assert len(training_file(events).splitlines()) == 3


def test_no_built_in_suite_asks_a_question_that_rehearsal_trains_on() -> None:
    """Rehearsal (worker.training.rehearsal) holds the base model's answers to its prompts; a suite that asked
    one of them would measure rehearsal, not forgetting."""
    from worker.training.rehearsal import PROMPTS

    asked = {item.prompt for name in SUITES for item in generate_suite(name)}
    assert not asked & set(PROMPTS)
