"""Adapter operations end to end on `ftaas up` (Celery workers, the official SDK's generic requests): merge
two adapters trained on disjoint fact sets and measure with knowledge evals how much of each set the soup
keeps versus each parent; compress an adapter and measure what memorization it loses."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.people import OTHER_PEOPLE, PEOPLE, train_on_suite
from tests.e2e.servers import LiveServer, wait_for

pytestmark = pytest.mark.slow

#: Where the measured figures go (docs/adapters.md records them); a temporary file unless set.
RESULTS = os.environ.get("FTAAS_ADAPTER_RESULTS")


def operation(server: LiveServer, body: dict[str, Any]) -> dict[str, Any]:
    client = server.client()
    created = client.post("/adapter_operations", body=body, cast_to=object)
    done = wait_for(lambda: (o := client.get(f"/adapter_operations/{created['id']}", cast_to=object))["status"]
                    in ("succeeded", "failed") and o, timeout=300, interval=0.5, what=f"the {body['type']}")
    assert done["status"] == "succeeded", done["error"]
    return done


def memorization(server: LiveServer, model: str, suite: str) -> float:
    """The share of `suite`'s trained facts `model` answers exactly (greedy, tuned model only)."""
    uri = "builtin://" + suite.removeprefix("builtin:")
    spec = {"spec_version": "1.0", "name": "memorization-only",
            "generation": {"temperature": 0, "max_new_tokens": 16, "seed": 42, "system_prompt": None},
            "datasets": [{"id": "fictional_people", "setting": "new_knowledge", "fact_key_field": "fact_key",
                          "splits": [{"id": "memorization", "role": "train_and_eval", "variant": "original",
                                      "source": {"uri": uri, "format": "jsonl",
                                                 "row_filter": {"field": "split", "equals": "memorization"}},
                                      "prompt_field": "prompt", "reference_field": "reference",
                                      "scorer": "exact", "counts_toward": "memorization"}]}],
            "scorers": {"exact": {"type": "exact_match",
                                  "normalize": ["lowercase", "strip", "strip_punctuation", "collapse_whitespace"]}},
            "baseline": {"evaluate_base_model": False},
            "aggregation": {"headline": {"memorization": {"fictional_people": "memorization"},
                                         "generalization": {"fictional_people": "memorization"}}}}
    client = server.client()
    created = client.post("/knowledge_evals", body={"model": model, "spec": spec}, cast_to=object)
    done = wait_for(lambda: (e := client.get(f"/knowledge_evals/{created['id']}", cast_to=object))["status"]
                    in ("succeeded", "failed") and e, timeout=300, interval=0.5, what="a memorization eval")
    assert done["status"] == "succeeded", done["error"]
    return done["summary"]["memorization"]["mean_tuned"]


@pytest.fixture(scope="module")
def parents(embedded: LiveServer, evaluated_job: dict[str, Any]) -> tuple[str, str]:
    other = train_on_suite(embedded, OTHER_PEOPLE, suffix="people-b")
    return evaluated_job["job"].fine_tuned_model, other.fine_tuned_model


def record(key: str, value: Any, tmp_path: Path) -> None:
    path = Path(RESULTS) if RESULTS else tmp_path / "adapter-results.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=2))


def test_a_soup_of_adapters_trained_on_disjoint_facts_keeps_some_of_each(embedded: LiveServer,
                                                                           parents: tuple[str, str],
                                                                           tmp_path: Path) -> None:
    first, second = parents
    table: dict[str, dict[str, float]] = {}
    models = {"parent A": first, "parent B": second}
    models["linear soup (0.5/0.5)"] = operation(embedded, {"type": "merge", "models": [first, second],
                                                           "suffix": "soup"})["model"]
    models["task arithmetic (1/1)"] = operation(embedded, {"type": "merge", "models": [first, second],
                                                           "weights": [1.0, 1.0], "suffix": "sum"})["model"]
    ties = operation(embedded, {"type": "merge", "models": [first, second], "weights": [1.0, 1.0],
                                "method": "ties", "density": 0.5, "rank": 32, "suffix": "ties"})
    models["TIES (density 0.5, rank 32)"] = ties["model"]
    for label, model in models.items():
        table[label] = {"set A": memorization(embedded, model, PEOPLE), "set B": memorization(embedded, model, OTHER_PEOPLE)}
    record("merges", table, tmp_path)
    # Each parent knows its own facts and not the other's: the measurement can tell them apart. (Not 0 on
    # the other set: colours, occupations and cities come from short lists, so some answers agree by chance.)
    assert table["parent A"]["set A"] >= 0.9 and table["parent A"]["set B"] <= 0.25, table
    assert table["parent B"]["set B"] >= 0.9 and table["parent B"]["set A"] <= 0.25, table
    for label in ("linear soup (0.5/0.5)", "task arithmetic (1/1)", "TIES (density 0.5, rank 32)"):
        assert 0.0 <= table[label]["set A"] <= 1.0 and 0.0 <= table[label]["set B"] <= 1.0
        assert table[label] not in (table["parent A"], table["parent B"]), label  # a new model, not a parent
    assert ties["result"]["ranks"] == [32] and ties["result"]["max_truncation_error"] >= 0


def test_a_compressed_adapter_is_8x_smaller_and_its_memorization_loss_is_measured(
        embedded: LiveServer, parents: tuple[str, str], tmp_path: Path) -> None:
    first, _ = parents
    figures = {}
    for density in (0.1, 0.3):
        compact = operation(embedded, {"type": "compress", "model": first, "density": density,
                                       "suffix": f"compact{int(density * 100)}"})
        assert compact["result"]["compression_ratio"] >= 8
        figures[f"density {density}"] = {"ratio": compact["result"]["compression_ratio"],
                                         "memorization": memorization(embedded, compact["model"], PEOPLE)}
    figures["uncompressed"] = {"ratio": 1.0, "memorization": memorization(embedded, first, PEOPLE)}
    record("compression", figures, tmp_path)
    assert figures["uncompressed"]["memorization"] >= 0.9
    # The drop is what is measured; fewer kept entries never memorise more here (sanity of the measurement).
    assert figures["density 0.1"]["memorization"] <= figures["density 0.3"]["memorization"] <= 1.0


def test_the_cli_exports_an_adapter_and_imports_it_back(embedded: LiveServer, parents: tuple[str, str],
                                                        tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {**embedded.env, "FTAAS_API_KEY": embedded.api_key, "FTAAS_BASE_URL": embedded.base_url}

    def ftaas(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "ftaas.cli", "adapters", *args], env=env,
                                capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stderr
        return result

    first, _ = parents
    ftaas("export", "--model", first, "--format", "adapter", "-o", str(tmp_path / "adapter.tar"))
    imported = ftaas("import", str(tmp_path / "adapter.tar"), "--base-model", "ftaas-tiny", "--suffix", "back")
    model = imported.stdout.strip()
    assert model.startswith("ft:ftaas-tiny:default:back:")
    messages = [{"role": "user", "content": "Answer the question with a number, word, or phrase.\nWho are you?"}]
    client = embedded.client()
    answers = [client.chat.completions.create(model=m, messages=messages, max_tokens=8, temperature=0)
               .choices[0].message.content for m in (first, model)]
    assert answers[0] == answers[1]  # the same adapter, exported and imported
    listing = subprocess.run([sys.executable, "-m", "ftaas.cli", "adapters", "list"], env=env, capture_output=True,
                             text=True, timeout=60, check=True).stdout
    assert "import" in listing and "export" in listing
