"""What "auto" resolves to, and when stop_when_learned and rehearsal are on (contracts.training.spec)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from contracts.training.spec import (
    LARGE_FILE_EXAMPLES,
    SMALL_FILE_EPOCHS,
    SMALL_FILE_MULTIPLIER,
    Method,
    TrainingSpec,
    resolve_hyperparameters,
)


def method(kind: str = "supervised", **section: Any) -> Method:
    return Method.model_validate({"type": kind, kind: section})


def test_small_files_get_the_rate_and_the_passes_that_teach_them() -> None:
    for n in (6, 16, 48, 100):
        assert resolve_hyperparameters(method(), n) == {
            "n_epochs": SMALL_FILE_EPOCHS, "batch_size": 1, "learning_rate_multiplier": SMALL_FILE_MULTIPLIER}


def test_epochs_and_rate_fall_as_files_grow_and_large_files_stay_fast() -> None:
    sizes = [100, 200, 500, 1000, 2000, 5000, 10_000, LARGE_FILE_EXAMPLES, 100_000]
    resolved = [resolve_hyperparameters(method(), n) for n in sizes]
    epochs = [r["n_epochs"] for r in resolved]
    rates = [r["learning_rate_multiplier"] for r in resolved]
    assert epochs == sorted(epochs, reverse=True) and rates == sorted(rates, reverse=True)
    assert epochs[sizes.index(2000)] == 4 and epochs[-1] == 1  # 100,000 examples: one pass
    assert rates[sizes.index(2000)] == SMALL_FILE_MULTIPLIER and rates[sizes.index(LARGE_FILE_EXAMPLES)] == 1.0
    # Examples seen stay near 25,000 for large files (at least one pass), as with the hosted API's rule.
    assert all(r["n_epochs"] == max(1, 25_000 // n) for r, n in zip(resolved, sizes, strict=True) if n >= 10_000)


def test_what_the_user_set_is_kept_and_dpo_and_other_adapters_keep_multiplier_one() -> None:
    fixed = method(hyperparameters={"n_epochs": 2, "batch_size": 3, "learning_rate_multiplier": 0.5})
    assert resolve_hyperparameters(fixed, 16) == {"n_epochs": 2, "batch_size": 3, "learning_rate_multiplier": 0.5}
    assert resolve_hyperparameters(method("dpo"), 16)["learning_rate_multiplier"] == 1.0
    assert resolve_hyperparameters(method(adapter={"type": "ia3"}), 16)["learning_rate_multiplier"] == 1.0


def test_stop_when_learned_and_rehearsal_follow_auto_epochs_unless_set() -> None:
    auto = method().to_json({"n_epochs": 20, "batch_size": 1, "learning_rate_multiplier": 5.0}, data_format="chat")
    assert auto["supervised"]["stop_when_learned"] is True and auto["supervised"]["rehearsal"] is True
    fixed = method(hyperparameters={"n_epochs": 4}).to_json(data_format="chat")
    assert fixed["supervised"]["stop_when_learned"] is False and fixed["supervised"]["rehearsal"] is False
    asked = method(hyperparameters={"n_epochs": 4}, stop_when_learned=True, rehearsal=True).to_json(data_format="chat")
    assert asked["supervised"]["stop_when_learned"] is True and asked["supervised"]["rehearsal"] is True
    # Rehearsal is chat data's: a prompt/completion file records it off.
    assert method().to_json(data_format="prompt_completion")["supervised"]["rehearsal"] is False
    spec = TrainingSpec.for_job(base_model="m", method=auto, hyperparameters=auto["supervised"]["hyperparameters"],
                                seed=0)
    assert spec.stop_when_learned and spec.rehearsal and spec.learning_rate == pytest.approx(1e-3)


def test_dpo_refuses_stop_when_learned_and_rehearsal() -> None:
    for option in ("stop_when_learned", "rehearsal"):
        with pytest.raises(ValidationError, match=f"{option} applies to supervised jobs"):
            method("dpo", **{option: True})
    recorded = method("dpo").to_json(data_format="preference")["dpo"]
    assert recorded["stop_when_learned"] is False and recorded["rehearsal"] is False
    Method.model_validate({"type": "dpo", "dpo": recorded})  # what is recorded validates again
