"""Did a supervised run learn its own training data? What the job says about it when training ends.

At the end of every supervised run the trainer scores the published adapter on its training data (token
accuracy on assistant tokens, eval mode; `TrainingOutcome.final_train_accuracy`). A job whose accuracy stays
below LOW_FINAL_ACCURACY did not learn what it was shown, and the hosted API would have said nothing; here
the job gets a `warn` event naming the change most likely to help, read from what the run resolved to.
"""

from __future__ import annotations

from contracts.training.spec import BASE_LEARNING_RATES, LEARNED_ACCURACY, LOW_FINAL_ACCURACY, TrainingSpec

#: Above this many epochs a longer run is not the advice (the limit of n_epochs is 50).
_MANY_EPOCHS = 25


def learned_message(epoch: int, total_epochs: int, accuracy: float) -> str:
    return (f"Stopped after epoch {epoch} of {total_epochs}: the training token accuracy on assistant tokens "
            f"reached {accuracy:.3f} (at least {LEARNED_ACCURACY}), so the data is learned (stop_when_learned)")


def final_pass_message(*, accuracy: float, loss: float, examples: int, total_examples: int) -> str:
    scope = "all" if examples == total_examples else f"{examples} evenly spaced of the"
    return (f"Final training token accuracy on assistant tokens: {accuracy:.3f} (loss {loss:.4f}) over {scope} "
            f"{total_examples} training examples")


def low_accuracy_warning(spec: TrainingSpec, accuracy: float, total_examples: int) -> str | None:
    """None when `accuracy` reaches LOW_FINAL_ACCURACY; else what went wrong and the changes that apply."""
    if accuracy >= LOW_FINAL_ACCURACY:
        return None
    advice: list[str] = []
    multiplier = spec.learning_rate / BASE_LEARNING_RATES[spec.adapter.type]
    if spec.n_epochs < _MANY_EPOCHS:
        advice.append(f"train for more epochs (n_epochs was {spec.n_epochs}; try {min(50, spec.n_epochs * 2)})")
    if multiplier < 10:
        advice.append(f"raise learning_rate_multiplier (it was {multiplier:g}; try {min(100.0, multiplier * 3):g})")
    if spec.adapter.type in ("lora", "dora", "rslora") and spec.adapter.r < 16 and total_examples > 1000:
        advice.append(f"give the adapter more capacity (adapter r was {spec.adapter.r}; try 16 or 32)")
    if not advice:
        advice.append("check that the assistant replies follow from the prompts (contradictory or random "
                      "targets cannot be learned)")
    return (f"The model did not learn its training data: final training token accuracy {accuracy:.3f} is below "
            f"{LOW_FINAL_ACCURACY}, so it will not reliably answer as trained. To fix: {'; or '.join(advice)}.")
