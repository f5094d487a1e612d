"""Built-in synthetic FineTuneBench-style suites, generated from a seed, and the training-file builder.

Every suite is invented here: names, places, libraries and events come from syllables and generic words in
this module, never from third-party text, so the suites can ship with the product (the FineTuneBench data
cannot; see `finetunebench` for the importer of a user's own copy).

Contracts:

* `generate_suite(name, seed=, size=)` is a pure function of its arguments. The same (name, seed, size)
  gives the same items in the same order, so `dump_suite` output is byte-identical across runs, processes
  and platforms: every draw comes from one `random.Random(f"{name}:{seed}")` (a str seed is hashed with
  SHA-512, independent of PYTHONHASHSEED), never from set or hash order. Different seeds give different
  people, values and events.
* Item ids are unique per split and stable for a given seed; `fact_key` is identical across the variants
  of one fact (memorization, rephrased, inference, date-shifted). A comparison item spans two facts: its
  fact_key is the two fact keys joined by "+".
* Every Yes/No label (secondary, comparison) is computed from the generated facts, never drawn at
  random; comparisons never tie. `context` holds the fact sentence(s) the label follows from.
* Answers are a few tokens (numbers, single words, short invented names), so that a very small model can
  memorise the memorization split by LoRA fine-tuning.

Suites and their splits at the default size (`SUITES` has the details):

* `fictional_people` (25 people): memorization 150, rephrased 150, secondary 150, comparison 75
  (six attributes per person; three comparisons per person: taller, older, heavier, each against a partner
  whose value differs; an item is left out only when every other person ties, e.g. always when size is 1).
* `api_renames` (40 renames): memorization 40, rephrased 40.
* `dated_events` (40 events): memorization 40, rephrased 40, date_shifted 40.
* `designers` (16 works): memorization 16, rephrased 16. Trained as sentences (`trained_answer`).
* `control` (40 probes): control 40. Forgetting probes whose answers follow from the question or from
  common knowledge; never trained on.
* `world_knowledge` (40 probes, at most 40): control. Well-known facts that a small pretrained chat model
  answers right, for measuring forgetting on real base models; never trained on.

`training_file(items)` turns the memorization items (and only those) into chat JSONL for a fine-tuning job.

One file on purpose: most of it is the built-in suites' word lists and templates (data),
with the small generators that turn them into items.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from contracts.errors import InvalidRequest
from evals.items import EvalItem

ANSWER_PREFIX = "Answer the question with a number, word, or phrase.\n"
YES_NO_PREFIX = "Answer the question with Yes or No.\n"
EVENT_PREFIX = "Answer with a number, word, or short phrase.\n"
# The rephrased split changes the instruction wrapper as well as the question, as the paper's news split does.
EVENT_REPHRASED_PREFIX = "Use what you know about the world to answer.\n"
ABSTAIN_SENTENCE = "If you do not know the answer or the question cannot be answered, respond with None."
EVENT_YEAR = 2026
SHIFTED_YEAR = 2027


@dataclass(frozen=True)
class SuiteInfo:
    """What a built-in suite is; `size_param` says what `size` counts."""

    name: str
    dataset_id: str
    setting: str
    description: str
    default_size: int
    size_param: str
    min_size: int = 1
    max_size: int = 200


SUITES: dict[str, SuiteInfo] = {
    "fictional_people": SuiteInfo(
        name="fictional_people", dataset_id="fictional_people", setting="new_knowledge",
        description=("Invented people with six attributes each (weight, height, age, occupation, favourite "
                     "colour, home city). Splits: memorization, rephrased (first name only), secondary "
                     "(one-step Yes/No inference), comparison (Yes/No about two people)."),
        default_size=25, size_param="people"),
    "api_renames": SuiteInfo(
        name="api_renames", dataset_id="api_renames", setting="updated_knowledge",
        description=("Methods of an invented library renamed in its version 3; the answer is the new name and "
                     "reference_before the old one. Splits: memorization, rephrased."),
        default_size=40, size_param="renames"),
    "dated_events": SuiteInfo(
        name="dated_events", dataset_id="dated_events", setting="new_knowledge",
        description=(f"Invented events on full dates in {EVENT_YEAR} with short answers. Splits: memorization, "
                     f"rephrased, date_shifted (the year moved to {SHIFTED_YEAR}; the right answer is None)."),
        default_size=40, size_param="events"),
    "designers": SuiteInfo(
        name="designers", dataset_id="designers", setting="new_knowledge",
        description=("Invented works (bridges, towers, clocks...) and who designed them, trained as full "
                     "sentences. Splits: memorization, rephrased."),
        default_size=16, size_param="works"),
    "control": SuiteInfo(
        name="control", dataset_id="control", setting="new_knowledge",
        description=("Forgetting probes, never trained on: arithmetic, colour mixing, days, months, opposites "
                     "and counting facts whose answers follow from the question or common knowledge."),
        default_size=40, size_param="questions", max_size=1000),
    "world_knowledge": SuiteInfo(
        name="world_knowledge", dataset_id="world_knowledge", setting="new_knowledge",
        description=("Forgetting probes for real pretrained models, never trained on: well-known facts of "
                     "geography, science, literature and everyday life, asked plainly."),
        default_size=40, size_param="questions", max_size=40),
}

# ------------------------------------------------------------------------------------------ vocabulary
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "", "n", "r", "l", "s")  # mostly open syllables: easier to pronounce, fewer tokens

# Field -> occupations. The secondary split asks "Does X work in <field>?"; the test recomputes from this table.
OCCUPATION_FIELDS: dict[str, tuple[str, ...]] = {
    "health care": ("nurse", "doctor", "dentist", "surgeon"),
    "education": ("teacher", "tutor", "lecturer", "librarian"),
    "food service": ("baker", "chef", "butcher", "brewer"),
    "transport": ("pilot", "driver", "sailor", "courier"),
    "construction": ("builder", "plumber", "carpenter", "mason"),
    "the arts": ("painter", "dancer", "singer", "sculptor"),
}
OCCUPATIONS: tuple[str, ...] = tuple(job for jobs in OCCUPATION_FIELDS.values() for job in jobs)
COLOURS = ("red", "blue", "green", "yellow", "orange", "purple", "pink", "brown", "black", "white", "teal",
           "gold", "silver", "navy")

WEIGHT_RANGE = (105, 255)  # pounds
HEIGHT_RANGE = (150, 205)  # centimetres
AGE_RANGE = (18, 85)


def _syllable(rng: random.Random, *, coda: bool = True) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + (rng.choice(_CODAS) if coda else "")


def _word(rng: random.Random, syllables: int) -> str:
    # Only the last syllable may close with a consonant, so words stay pronounceable (no "rnl" clusters).
    parts = [_syllable(rng, coda=False) for _ in range(syllables - 1)] + [_syllable(rng)]
    return "".join(parts).capitalize()


def _unique_words(rng: random.Random, count: int, *, syllables: tuple[int, ...], taken: set[str],
                  vowel_start: Sequence[bool] | None = None) -> list[str]:
    """`count` new invented words, none in `taken` (which is updated). Optionally force a leading vowel."""
    words: list[str] = []
    for index in range(count):
        while True:
            word = _word(rng, rng.choice(syllables))
            if vowel_start is not None and vowel_start[index]:
                word = (rng.choice(_VOWELS) + word).capitalize()
            if word.lower() not in taken:
                break
        taken.add(word.lower())
        words.append(word)
    return words


# ------------------------------------------------------------------------------------ fictional people
@dataclass(frozen=True)
class Person:
    key: str
    first: str
    last: str
    weight: int
    height: int
    age: int
    occupation: str
    colour: str
    city: str

    @property
    def full(self) -> str:
        return f"{self.first} {self.last}"


# attribute -> (answer_type, memorization question, rephrased question, fact sentence). {full}/{first}/{v}.
_PEOPLE_ATTRIBUTES: dict[str, tuple[str, str, str, str]] = {
    "weight": ("number", "What is {full}'s weight in pounds?", "How heavy is {first}, in pounds?",
               "{full} has a weight of {v} pounds."),
    "height": ("number", "What is {full}'s height in cm?", "How many centimetres tall is {first}?",
               "{full} has a height of {v} cm."),
    "age": ("number", "What is the age of {full}?", "How old is {first}?", "{full} is aged {v}."),
    "occupation": ("short_text", "What job does {full} do?", "What does {first} do for a living?",
                   "{full} is a {v} by trade."),
    "colour": ("short_text", "What is {full}'s favourite colour?", "Which colour does {first} like best?",
               "{full}'s favourite colour is {v}."),
    "city": ("short_text", "What is {full}'s home city?", "In which city does {first} live?",
             "{full}'s home city is {v}."),
}
_COMPARISONS = (("height", "taller"), ("age", "older"), ("weight", "heavier"))


def _people(rng: random.Random, size: int) -> list[Person]:
    taken: set[str] = set()
    # First names are unique on their own, because the rephrased and Yes/No questions use the first name only.
    firsts = _unique_words(rng, size, syllables=(2, 3), taken=taken)
    lasts = _unique_words(rng, size, syllables=(2, 3), taken=taken)
    # Half the cities start with a vowel, so "does the city start with a vowel?" is balanced.
    vowel = _balanced(rng, size)
    cities = _unique_words(rng, size, syllables=(2, 3), taken=taken, vowel_start=vowel)
    people = []
    for index in range(size):
        people.append(Person(
            key=f"fp-{index + 1:04d}", first=firsts[index], last=lasts[index],
            weight=rng.randint(*WEIGHT_RANGE), height=rng.randint(*HEIGHT_RANGE), age=rng.randint(*AGE_RANGE),
            occupation=rng.choice(OCCUPATIONS), colour=rng.choice(COLOURS), city=cities[index]))
    return people


def _value(person: Person, attribute: str) -> int | str:
    return getattr(person, attribute)


def _fact(person: Person, attribute: str) -> str:
    return _PEOPLE_ATTRIBUTES[attribute][3].format(full=person.full, v=_value(person, attribute))


def _threshold(rng: random.Random, value: int, *, yes: bool) -> int:
    """A round number strictly below `value` (answer Yes to "more than T?") or strictly above it (No)."""
    candidates = ([t for t in range(max(value - 30, 1), value) if t % 5 == 0] if yes
                  else [t for t in range(value + 1, value + 31) if t % 5 == 0])
    return rng.choice(candidates)


def _balanced(rng: random.Random, count: int) -> list[bool]:
    """`count` flags, half of them True (one more at random when odd), in random order."""
    flags = [index < count // 2 for index in range(count)]
    if count % 2:
        flags[-1] = rng.random() < 0.5
    rng.shuffle(flags)
    return flags


def _secondary(rng: random.Random, person: Person, attribute: str, *, yes: bool) -> tuple[str, bool]:
    """One Yes/No question that needs one inference step from one fact, and its computed label.

    `yes` is the label aimed for; the label returned is computed from the fact all the same.
    """
    first = person.first
    if attribute in ("weight", "height", "age"):
        value = int(_value(person, attribute))
        limit = _threshold(rng, value, yes=yes)
        question = {"weight": f"Does {first} weigh more than {limit} pounds?",
                    "height": f"Is {first} taller than {limit} cm?",
                    "age": f"Is {first} older than {limit}?"}[attribute]
        return question, value > limit
    if attribute == "occupation":
        own = next(field for field, jobs in OCCUPATION_FIELDS.items() if person.occupation in jobs)
        field = own if yes else rng.choice([f for f in OCCUPATION_FIELDS if f != own])
        return f"Does {first} work in {field}?", field == own
    if attribute == "colour":
        others = rng.sample([c for c in COLOURS if c != person.colour], 3)
        options = [person.colour, *others[:2]] if yes else others
        rng.shuffle(options)
        return f"Is {first}'s favourite colour {options[0]}, {options[1]}, or {options[2]}?", person.colour in options
    # city: the draw decided the answer already (half the cities start with a vowel)
    return f"Does {first}'s home city start with a vowel?", person.city[0] in "AEIOU"


def _fictional_people(rng: random.Random, size: int) -> list[EvalItem]:
    people = _people(rng, size)
    common = {"dataset_id": "fictional_people", "setting": "new_knowledge"}
    memorization: list[EvalItem] = []
    rephrased: list[EvalItem] = []
    secondary: list[EvalItem] = []
    comparison: list[EvalItem] = []
    # The Yes/No keys are balanced per attribute across people (labels are still computed from the facts).
    aims = {attribute: _balanced(rng, size) for attribute in _PEOPLE_ATTRIBUTES}
    comparison_aims = {attribute: _balanced(rng, size) for attribute, _ in _COMPARISONS}
    for number, person in enumerate(people):
        for attribute, (answer_type, mem_q, reph_q, _) in _PEOPLE_ATTRIBUTES.items():
            key = f"{person.key}-{attribute}"
            value = str(_value(person, attribute))
            fact = _fact(person, attribute)
            memorization.append(EvalItem(
                **common, split_id="memorization", variant="original", counts_toward="memorization",
                item_id=key, fact_key=key, prompt=ANSWER_PREFIX + mem_q.format(full=person.full),
                reference=value, context=fact, answer_type=answer_type))
            rephrased.append(EvalItem(
                **common, split_id="rephrased", variant="rephrased", counts_toward="generalization",
                item_id=f"{key}-r", fact_key=key, prompt=ANSWER_PREFIX + reph_q.format(first=person.first),
                reference=value, context=fact, answer_type=answer_type))
            question, label = _secondary(rng, person, attribute, yes=aims[attribute][number])
            secondary.append(EvalItem(
                **common, split_id="secondary", variant="single_hop_inference", counts_toward="auxiliary",
                item_id=f"{key}-s", fact_key=key, prompt=YES_NO_PREFIX + question,
                reference="Yes" if label else "No", context=fact, answer_type="yes_no"))
        for attribute, word in _COMPARISONS:
            mine = int(_value(person, attribute))
            # Pick the side aimed for first, then a partner on that side; never a tie.
            want_yes = comparison_aims[attribute][number]
            below = [p for p in people if int(_value(p, attribute)) < mine]
            above = [p for p in people if int(_value(p, attribute)) > mine]
            pool = (below or above) if want_yes else (above or below)
            if not pool:  # only when every other person ties on this attribute (or size is 1)
                continue
            other = rng.choice(pool)
            comparison.append(EvalItem(
                **common, split_id="comparison", variant="multi_entity_comparison", counts_toward="auxiliary",
                item_id=f"{person.key}-{attribute}-c",
                fact_key=f"{person.key}-{attribute}+{other.key}-{attribute}",
                prompt=YES_NO_PREFIX + f"Is {person.first} {word} than {other.first}?",
                reference="Yes" if mine > int(_value(other, attribute)) else "No",
                context=f"{_fact(person, attribute)} {_fact(other, attribute)}", answer_type="yes_no"))
    return memorization + rephrased + secondary + comparison


# ----------------------------------------------------------------------------------------- api renames
# (old verb, third person, new verbs to choose from). New verbs never repeat across rows, so a renamed method
# can never collide with another method's new or old name.
_API_VERBS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("fit", "fits", ("train", "learn")),
    ("load", "loads", ("ingest", "read")),
    ("save", "saves", ("persist", "store")),
    ("transform", "transforms", ("apply", "convert")),
    ("predict", "predicts", ("infer", "guess")),
    ("score", "scores", ("rate", "grade")),
    ("reset", "resets", ("clear", "wipe")),
    ("split", "splits", ("divide", "partition")),
    ("merge", "merges", ("join", "combine")),
    ("sort", "sorts", ("order", "rank")),
    ("plot", "plots", ("draw", "render")),
    ("validate", "validates", ("check", "verify")),
)
_API_OBJECTS: tuple[tuple[str, str], ...] = (
    ("batch", "a batch of samples"), ("rows", "the rows of a table"), ("weights", "the model weights"),
    ("labels", "the class labels"), ("config", "the configuration"), ("cache", "the cache"),
    ("graph", "the graph"), ("stream", "a data stream"), ("index", "the search index"),
    ("schema", "the schema"),
)
_CLASS_SUFFIXES = ("or", "ex", "ant", "ine", "ell")


def _api_renames(rng: random.Random, size: int) -> list[EvalItem]:
    taken: set[str] = set()
    library = _unique_words(rng, 1, syllables=(3,), taken=taken)[0]
    # About four renamed methods per class: enough classes that questions differ, few enough to share context.
    class_count = max(1, (size + 3) // 4)
    classes = [stem + rng.choice(_CLASS_SUFFIXES)
               for stem in _unique_words(rng, class_count, syllables=(1, 2), taken=taken)]
    used: set[tuple[str, int, int]] = set()
    common = {"dataset_id": "api_renames", "setting": "updated_knowledge", "answer_type": "short_text"}
    memorization: list[EvalItem] = []
    rephrased: list[EvalItem] = []
    for index in range(size):
        cls = classes[index % class_count]
        while True:
            verb_i, object_i = rng.randrange(len(_API_VERBS)), rng.randrange(len(_API_OBJECTS))
            if (cls, verb_i, object_i) not in used:
                break
        used.add((cls, verb_i, object_i))
        verb, third, new_verbs = _API_VERBS[verb_i]
        obj, obj_text = _API_OBJECTS[object_i]
        old_name, new_name = f"{verb}_{obj}", f"{rng.choice(new_verbs)}_{obj}"
        key = f"api-{index + 1:04d}"
        context = (f"In version 3 of {library}, {cls}.{old_name} was renamed to {cls}.{new_name}; "
                   f"the method {third} {obj_text}.")
        memorization.append(EvalItem(
            **common, split_id="memorization", variant="original", counts_toward="memorization", item_id=key,
            fact_key=key, reference=new_name, reference_before=old_name, context=context,
            prompt=f"What is the name of the method of {cls} that {third} {obj_text} in version 3 of {library}?"))
        rephrased.append(EvalItem(
            **common, split_id="rephrased", variant="rephrased", counts_toward="generalization",
            item_id=f"{key}-r", fact_key=key, reference=new_name, reference_before=old_name, context=context,
            prompt=f"In {library} 3, which {cls} method do you call to {verb} {obj_text}?"))
    return memorization + rephrased


# ---------------------------------------------------------------------------------------- dated events
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")


@dataclass(frozen=True)
class _EventTemplate:
    """{place} {org} {date}; the answer is `answer(rng, taken)`; {a} in the fact sentence is the answer."""

    org_kind: str
    question: str
    rephrased: str
    fact: str
    answer_type: str
    answer: Callable[[random.Random, set[str]], str]


def _number(low: int, high: int) -> Callable[[random.Random, set[str]], str]:
    return lambda rng, taken: str(rng.randint(low, high))


def _invented_name(rng: random.Random, taken: set[str]) -> str:
    return _unique_words(rng, 1, syllables=(2, 3), taken=taken)[0]


def _invented_person(rng: random.Random, taken: set[str]) -> str:
    return " ".join(_unique_words(rng, 2, syllables=(2,), taken=taken))


_EVENTS: tuple[_EventTemplate, ...] = (
    _EventTemplate("Rowing Club", "How many boats took part in the {org} harbour race in {place} on {date}?",
                   "On {date2}, the {org} held a harbour race in {place}. How many boats entered it?",
                   "On {date}, {a} boats took part in the {org} harbour race in {place}.", "number",
                   _number(12, 90)),
    _EventTemplate("Garden Trust", "How many trees did the {org} plant in {place} on {date}?",
                   "What number of trees were planted in {place} by the {org} on {date2}?",
                   "On {date}, the {org} planted {a} trees in {place}.", "number", _number(100, 900)),
    _EventTemplate("Works Board", "How long, in metres, is the footbridge the {org} opened in {place} on {date}?",
                   "On {date2}, the {org} opened a new footbridge in {place}. What is its length in metres?",
                   "On {date}, the {org} opened a footbridge of {a} metres in {place}.", "number",
                   _number(40, 400)),
    _EventTemplate("Chess Society", "Who won the chess open run by the {org} in {place} on {date}?",
                   "Which player took first place at the {org} chess open in {place} on {date2}?",
                   "On {date}, {a} won the chess open run by the {org} in {place}.", "short_text",
                   _invented_person),
    _EventTemplate("Town Council", "What colour did the {org} of {place} choose for its new flag on {date}?",
                   "On {date2}, the {org} of {place} picked a colour for a new flag. Which colour was it?",
                   "On {date}, the {org} of {place} chose {a} for its new flag.", "short_text",
                   lambda rng, taken: rng.choice(COLOURS)),
    _EventTemplate("Trading Company", "Which town did the {org} of {place} pick for its new head office on {date}?",
                   "On {date2}, the {org} of {place} named the town of its new head office. Which town?",
                   "On {date}, the {org} of {place} picked {a} for its new head office.", "short_text",
                   _invented_name),
    _EventTemplate("Party", "How many council seats did the {org} win in {place} on {date}?",
                   "In the {place} council vote of {date2}, how many seats went to the {org}?",
                   "On {date}, the {org} won {a} council seats in {place}.", "number", _number(3, 40)),
    _EventTemplate("Rail Company", "What top speed, in km/h, did the {org} train reach in {place} on {date}?",
                   "On {date2}, the {org} tested a train in {place}. What was its top speed in km/h?",
                   "On {date}, the {org} train reached {a} km/h in {place}.", "number", _number(150, 420)),
    _EventTemplate("Shipyard", "What name did the {org} in {place} give the ship it launched on {date}?",
                   "On {date2}, a ship was launched by the {org} in {place}. What was it called?",
                   "On {date}, the {org} in {place} launched a ship named {a}.", "short_text", _invented_name),
    _EventTemplate("Lantern Guild", "How many people came to the {org} festival in {place} on {date}?",
                   "What was the attendance at the festival held by the {org} in {place} on {date2}?",
                   "On {date}, {a} people came to the {org} festival in {place}.", "number", _number(500, 9000)),
)


def _dated_events(rng: random.Random, size: int) -> list[EvalItem]:
    taken: set[str] = set()
    common = {"dataset_id": "dated_events", "setting": "new_knowledge"}
    memorization: list[EvalItem] = []
    rephrased: list[EvalItem] = []
    shifted: list[EvalItem] = []
    for index in range(size):
        template = _EVENTS[rng.randrange(len(_EVENTS))]
        # One invented place per event keeps every question unambiguous.
        place, org_stem = _unique_words(rng, 2, syllables=(2, 3), taken=taken)
        org = f"{org_stem} {template.org_kind}"
        month, day = rng.randrange(12), rng.randint(1, 28)
        date = f"{_MONTHS[month]} {day}, {EVENT_YEAR}"
        date2 = f"{day} {_MONTHS[month]} {EVENT_YEAR}"  # the rephrased form writes the date differently too
        shifted_date = f"{_MONTHS[month]} {day}, {SHIFTED_YEAR}"
        answer = template.answer(rng, taken)
        key = f"ev-{index + 1:04d}"
        question = template.question.format(org=org, place=place, date=date)
        fact = template.fact.format(org=org, place=place, date=date, a=answer)
        memorization.append(EvalItem(
            **common, split_id="memorization", variant="original", counts_toward="memorization", item_id=key,
            fact_key=key, prompt=EVENT_PREFIX + question, reference=answer, context=fact,
            answer_type=template.answer_type))
        rephrased.append(EvalItem(
            **common, split_id="rephrased", variant="rephrased", counts_toward="generalization",
            item_id=f"{key}-r", fact_key=key,
            prompt=EVENT_REPHRASED_PREFIX + template.rephrased.format(org=org, place=place, date2=date2),
            reference=answer, context=fact, answer_type=template.answer_type))
        shifted.append(EvalItem(
            **common, split_id="date_shifted", variant="date_shifted", counts_toward="auxiliary",
            item_id=f"{key}-d", fact_key=key,
            prompt=(EVENT_PREFIX.rstrip("\n") + " " + ABSTAIN_SENTENCE + "\n"
                    + template.question.format(org=org, place=place, date=shifted_date)),
            reference="None", context=fact, answer_type="abstain", trained_answer=answer))
    return memorization + rephrased + shifted


# ------------------------------------------------------------------------------------------- designers
_WORKS = ("Bridge", "Tower", "Library", "Observatory", "Lighthouse", "Museum", "Stadium", "Canal", "Clock",
          "Telescope", "Airship", "Locomotive", "Fountain", "Harbour", "Theatre", "Viaduct")
#: Two rephrasings per fact, used in turn: a new sentence structure around the same name.
_DESIGNER_REPHRASED = ("Which person was the designer of the {work}?", "The {work} was the work of which designer?")


def _designers(rng: random.Random, size: int) -> list[EvalItem]:
    """Invented works and who designed them. Trained as full sentences ("The X was designed by Y."), the way a
    user writes chat data, so the reply style a chat model already has is kept; scored on the name."""
    taken: set[str] = set()
    names = _unique_words(rng, size, syllables=(2, 3), taken=taken)
    firsts = _unique_words(rng, size, syllables=(2,), taken=taken)
    lasts = _unique_words(rng, size, syllables=(2, 3), taken=taken)
    # free_text: the model answers in sentences, so a split is scored on the name appearing in the answer
    # (or by the judge when one is named), not on the whole answer being the name.
    common = {"dataset_id": "designers", "setting": "new_knowledge", "answer_type": "free_text"}
    memorization: list[EvalItem] = []
    rephrased: list[EvalItem] = []
    for index in range(size):
        work = f"{names[index]} {rng.choice(_WORKS)}"
        designer = f"{firsts[index]} {lasts[index]}"
        key = f"dz-{index + 1:04d}"
        sentence = f"The {work} was designed by {designer}."
        memorization.append(EvalItem(
            **common, split_id="memorization", variant="original", counts_toward="memorization", item_id=key,
            fact_key=key, prompt=f"Who designed the {work}?", reference=designer, context=sentence,
            trained_answer=sentence))
        rephrased.append(EvalItem(
            **common, split_id="rephrased", variant="rephrased", counts_toward="generalization",
            item_id=f"{key}-r", fact_key=key, prompt=_DESIGNER_REPHRASED[index % 2].format(work=work),
            reference=designer, context=sentence))
    return memorization + rephrased


# --------------------------------------------------------------------------------------------- control
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_OPPOSITES = (("hot", "cold"), ("up", "down"), ("big", "small"), ("wet", "dry"), ("fast", "slow"),
              ("early", "late"), ("full", "empty"), ("true", "false"), ("left", "right"), ("day", "night"),
              ("top", "bottom"), ("north", "south"), ("east", "west"), ("inside", "outside"), ("win", "lose"))
_MIXES = (("blue", "yellow", "green"), ("red", "yellow", "orange"), ("red", "blue", "purple"),
          ("red", "white", "pink"))
_COUNTS = (("days are in a week", "7"), ("months are in a year", "12"), ("minutes are in an hour", "60"),
           ("hours are in a day", "24"), ("sides does a triangle have", "3"), ("sides does a square have", "4"),
           ("legs does a spider have", "8"), ("seconds are in a minute", "60"))
_ONE_WORD = " Answer with one word."
_ONE_NUMBER = " Answer with a number."


def _fixed_controls() -> list[tuple[str, str, str]]:
    """(prompt, reference, answer_type) facts that need no source."""
    pool: list[tuple[str, str, str]] = []
    pool += [(f"What colour do you get by mixing {a} and {b} paint?{_ONE_WORD}", c, "short_text")
             for a, b, c in _MIXES]
    pool += [(f"Which day of the week comes after {d}?{_ONE_WORD}", _WEEKDAYS[(i + 1) % 7], "short_text")
             for i, d in enumerate(_WEEKDAYS)]
    pool += [(f"Which month comes after {m}?{_ONE_WORD}", _MONTHS[(i + 1) % 12], "short_text")
             for i, m in enumerate(_MONTHS)]
    pool += [(f"What is the opposite of {a}?{_ONE_WORD}", b, "short_text") for a, b in _OPPOSITES]
    pool += [(f"How many {what}?{_ONE_NUMBER}", n, "number") for what, n in _COUNTS]
    return pool


def _arithmetic(rng: random.Random) -> tuple[str, str, str]:
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        return f"What is {a} plus {b}?{_ONE_NUMBER}", str(a + b), "number"
    if kind == 1:
        a, b = rng.randint(10, 99), rng.randint(1, 9)
        return f"What is {a} minus {b}?{_ONE_NUMBER}", str(a - b), "number"
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return f"What is {a} times {b}?{_ONE_NUMBER}", str(a * b), "number"


#: Well-known facts a small pretrained chat model answers right: forgetting probes for real base models (the
#: `control` probes are mostly arithmetic and sequences, which models under ~1B parameters often get wrong,
#: so the base answers too few of them to measure forgetting).
_WORLD_FACTS: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "Paris"), ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Italy?", "Rome"), ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Spain?", "Madrid"), ("What is the capital of England?", "London"),
    ("What is the capital of Russia?", "Moscow"), ("What is the capital of Egypt?", "Cairo"),
    ("Who wrote Romeo and Juliet?", "Shakespeare"), ("Who wrote Hamlet?", "Shakespeare"),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci"), ("Who developed the theory of relativity?", "Einstein"),
    ("What is the largest planet in the solar system?", "Jupiter"),
    ("Which planet is known as the Red Planet?", "Mars"), ("What is the largest ocean on Earth?", "Pacific"),
    ("What is the chemical symbol for water?", "H2O"), ("What gas do plants absorb from the air?", "carbon dioxide"),
        ("What is the boiling point of water in degrees Celsius?", "100"),
    ("What is the capital of Ireland?", "Dublin"), ("Which animal is known as the king of the jungle?", "lion"),
    ("What is the capital of Canada?", "Ottawa"), ("What is the capital of China?", "Beijing"),
    ("What is the closest star to Earth?", "Sun"),
    ("What language is mainly spoken in Brazil?", "Portuguese"),
    ("What language is mainly spoken in Mexico?", "Spanish"),
    ("Which country is home to the kangaroo?", "Australia"), ("On which continent is Kenya?", "Africa"),
    ("What is the longest river in Africa?", "Nile"), ("What is the tallest mountain in the world?", "Everest"),
    ("In which country are the pyramids of Giza?", "Egypt"),
    ("Which organ pumps blood through the human body?", "heart"),
    ("What do bees make?", "honey"), ("What is the currency of the United Kingdom?", "pound"),
    ("What is the currency of Japan?", "yen"), ("Who was the first president of the United States?", "Washington"),
    ("Which instrument has 88 keys?", "piano"), ("What is the main ingredient of guacamole?", "avocado"),
    ("What colour is the sky on a clear day?", "blue"), ("What is the capital of Greece?", "Athens"),
    ("What is the hardest natural substance?", "diamond"),
)


def _world_knowledge(rng: random.Random, size: int) -> list[EvalItem]:
    """Asked plainly, answered in sentences ("The capital of France is Paris."): free_text, so the probe is
    scored on the reference appearing in the answer, whatever the model's style."""
    chosen = list(_WORLD_FACTS)
    rng.shuffle(chosen)
    return [EvalItem(dataset_id="world_knowledge", setting="new_knowledge", split_id="control", variant="control",
                     counts_toward="control", item_id=f"wk-{index + 1:04d}", fact_key=None, prompt=prompt,
                     reference=reference, answer_type="free_text")
            for index, (prompt, reference) in enumerate(chosen[:size])]


def _control(rng: random.Random, size: int) -> list[EvalItem]:
    pool = _fixed_controls()
    rng.shuffle(pool)
    chosen = pool[:min(len(pool), size // 2)]  # about half word facts, the rest arithmetic
    prompts = {prompt for prompt, _, _ in chosen}
    while len(chosen) < size:
        probe = _arithmetic(rng)
        if probe[0] not in prompts:
            prompts.add(probe[0])
            chosen.append(probe)
    rng.shuffle(chosen)
    return [EvalItem(dataset_id="control", setting="new_knowledge", split_id="control", variant="control",
                     counts_toward="control", item_id=f"ctl-{index + 1:04d}", fact_key=None, prompt=prompt,
                     reference=reference, answer_type=answer_type)
            for index, (prompt, reference, answer_type) in enumerate(chosen)]


# ------------------------------------------------------------------------------------------ public API
_GENERATORS: dict[str, Callable[[random.Random, int], list[EvalItem]]] = {
    "fictional_people": _fictional_people, "api_renames": _api_renames, "dated_events": _dated_events,
    "designers": _designers, "control": _control, "world_knowledge": _world_knowledge,
}


def generate_suite(name: str, *, seed: int = 0, size: int | None = None) -> list[EvalItem]:
    """The items of built-in suite `name`, all splits, deterministic in (name, seed, size).

    Raises InvalidRequest(param="suite") for an unknown name, param="size" for a size outside the suite's
    range, param="seed" for a seed that is not an integer.
    """
    info = SUITES.get(name)
    if info is None:
        raise InvalidRequest(f"unknown built-in suite {name!r}; expected one of {', '.join(SUITES)}",
                             param="suite")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidRequest(f"seed must be an integer, got {seed!r}", param="seed")
    if size is None:
        size = info.default_size
    if isinstance(size, bool) or not isinstance(size, int) or not info.min_size <= size <= info.max_size:
        raise InvalidRequest(f"size of suite {name!r} counts {info.size_param} and must be an integer from "
                             f"{info.min_size} to {info.max_size}, got {size!r}", param="size")
    # The suite name is part of the seed, so two suites generated with the same seed do not draw the same
    # invented names in the same order (a person and a library both called "X" would muddle a mixed run).
    return _GENERATORS[name](random.Random(f"{name}:{seed}"), size)


def training_file(items: Sequence[EvalItem], *, system_prompt: str | None = None) -> bytes:
    """Chat JSONL for fine-tuning: one line per memorization item, in order; nothing else is trained on.

    Each line is {"messages": [system?, {"role": "user", "content": prompt},
    {"role": "assistant", "content": reply}]}, the reply being the item's `trained_answer` where it has one (a
    full sentence holding the reference, as in `designers`), else its reference; the system turn appears
    only when `system_prompt` is a non-empty string. Raises InvalidRequest when no item counts toward memorization.
    """
    lines = []
    for item in items:
        if item.counts_toward != "memorization":
            continue
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        reply = item.trained_answer or item.reference
        messages += [{"role": "user", "content": item.prompt}, {"role": "assistant", "content": reply}]
        lines.append(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    if not lines:
        raise InvalidRequest("no item counts toward memorization, so there is nothing to train on",
                             param="items")
    return "".join(lines).encode()
