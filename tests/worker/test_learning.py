"""What a job says about whether it learned its data: the final-pass event and the low-accuracy warning."""

from __future__ import annotations

from contracts.training.spec import LOW_FINAL_ACCURACY, AdapterSettings, TrainingSpec
from worker.training.learning import final_pass_message, learned_message, low_accuracy_warning


def spec(**overrides: object) -> TrainingSpec:
    values: dict = {"base_model": "m", "method": "supervised", "n_epochs": 3, "batch_size": 1,
                    "learning_rate": 2e-4, "seed": 0, "adapter": AdapterSettings()}
    values.update(overrides)
    return TrainingSpec(**values)


def test_the_final_pass_message_states_the_accuracy_the_loss_and_what_was_scored() -> None:
    assert final_pass_message(accuracy=0.9876, loss=0.0412, examples=24, total_examples=24) == (
        "Final training token accuracy on assistant tokens: 0.988 (loss 0.0412) over all 24 training examples")
    assert "over 512 evenly spaced of the 9000 training examples" in final_pass_message(
        accuracy=0.5, loss=1.0, examples=512, total_examples=9000)


def test_a_run_that_learned_gets_no_warning() -> None:
    assert low_accuracy_warning(spec(), LOW_FINAL_ACCURACY, 24) is None
    assert low_accuracy_warning(spec(), 1.0, 24) is None


def test_a_short_slow_run_that_did_not_learn_is_told_to_train_longer_and_faster() -> None:
    warning = low_accuracy_warning(spec(n_epochs=3, learning_rate=2e-4), 0.41, 24)
    assert warning is not None and warning.startswith("The model did not learn its training data: final training "
                                                      "token accuracy 0.410 is below 0.8")
    assert "n_epochs was 3; try 6" in warning and "learning_rate_multiplier (it was 1; try 3)" in warning
    assert "adapter r" not in warning  # a small file does not need more adapter capacity


def test_the_advice_fits_what_the_run_already_tried() -> None:
    long_fast = low_accuracy_warning(spec(n_epochs=40, learning_rate=2e-3), 0.5, 24)
    assert long_fast is not None and "n_epochs" not in long_fast and "learning_rate_multiplier" not in long_fast
    assert "contradictory or random targets" in long_fast
    big_file = low_accuracy_warning(spec(n_epochs=40, learning_rate=2e-3, adapter=AdapterSettings(r=8)), 0.5, 50_000)
    assert big_file is not None and "adapter r was 8; try 16 or 32" in big_file


def test_the_learned_message_names_the_epoch_and_the_bar() -> None:
    assert learned_message(7, 13, 0.9953) == (
        "Stopped after epoch 7 of 13: the training token accuracy on assistant tokens reached 0.995 (at least "
        "0.99), so the data is learned (stop_when_learned)")
