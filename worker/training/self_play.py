"""SPIN (self-play fine-tuning; Chen et al., 2024) on supervised data, from the reinforcement machinery.

A run is `self_play_sft_epochs` supervised passes (SPIN improves a supervised fine-tune; none by default),
then `self_play_iterations` rounds. At the start of round k the model as it stands (the base with the
adapter after round k-1) answers every training prompt, sampled by ftaas's engine over the trainer's own
weights (serving.sampler, as reinforcement samples); each line becomes a pair: the data's answer chosen, the
model's own answer rejected. The same model scores both once (no gradient): those log probabilities are
the round's reference. The round then trains `n_epochs` passes of DPO's loss over the pairs
(worker.training.objectives.self_play_sums). The model learns to tell the data's answers from its own;
when they coincide the pair gives no gradient, so the method stops moving once the model writes what the
data writes (the paper's fixed point).

A line's prompt is everything before its last trained span (the last assistant turn); its answer is that
span. Sampling is seeded by the run's seed and the round, and a round's pairs are saved in every checkpoint
of the round (`state`/`restore`), so a resumed run trains on the pairs it would have trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from contracts.training.spec import SELF_PLAY_MAX_COMPLETION_TOKENS, TrainingSpec
from worker.training.data import IGNORE, SelfPlayPair, TokenizedExample

#: The file, in a checkpoint's directory, holding its round's pairs.
STATE_FILE = "self_play.json"
#: Prompts sampled per engine call (the engine batches them; bounded so that progress moves in steps).
PROMPTS_PER_CALL = 64


@dataclass(frozen=True)
class RoundSummary:
    """What a round's sampling came to: its 1-based number, the mean own-answer length in tokens, and the
    share of own answers identical to the data's."""

    round: int
    response_length: float
    matches: float


def split_answer(example: TokenizedExample) -> tuple[list[int], list[int]]:
    """(prompt, answer): the answer is the example's last contiguous run of trained tokens; the prompt is
    every token before it."""
    labelled = [i for i, label in enumerate(example.labels) if label != IGNORE]
    if not labelled:
        raise ValueError("a self-play line needs an answer to train on")
    end = labelled[-1] + 1
    start = end - 1
    while start > 0 and example.labels[start - 1] != IGNORE:
        start -= 1
    return list(example.input_ids[:start]), list(example.input_ids[start:end])


def max_answer_tokens(spec: TrainingSpec, examples: Sequence[TokenizedExample]) -> int:
    """The longest own answer a round samples: as asked, else the data's longest answer (capped)."""
    if spec.self_play_max_tokens:
        return int(spec.self_play_max_tokens)
    return max(1, min(SELF_PLAY_MAX_COMPLETION_TOKENS, max(len(split_answer(e)[1]) for e in examples)))


class SelfPlay:
    """The rounds of one SPIN run. `sampler` samples the model with its live adapter (serving.sampler);
    `score(sequences)` gives each sequence's summed log probability of its trained tokens under the model as
    it stands (no gradient); `autocast` the trainer's precision context."""

    def __init__(self, spec: TrainingSpec, model: Any, sampler: Any, examples: Sequence[TokenizedExample],
                 score: Callable[[list[TokenizedExample]], torch.Tensor],
                 autocast: Callable[[], AbstractContextManager[Any]]) -> None:
        self.spec = spec
        self.model = model
        self.sampler = sampler
        self.examples = list(examples)
        self.splits = [split_answer(e) for e in self.examples]
        self.max_new_tokens = max_answer_tokens(spec, self.examples)
        self.score = score
        self.autocast = autocast
        #: the round whose pairs are held (0-based), or None before the first
        self.round: int | None = None
        self.pairs: list[SelfPlayPair] = []
        self.summary: RoundSummary | None = None

    def round_of(self, epoch: int) -> int | None:
        """The round `epoch` belongs to (0-based), or None for the supervised passes before the first."""
        if epoch < self.spec.self_play_sft_epochs:
            return None
        return (epoch - self.spec.self_play_sft_epochs) // self.spec.epochs_per_iteration

    def prepare(self, round_index: int) -> RoundSummary:
        """Sample the model's own answers and score the round's pairs (call at the round's first step)."""
        self.sampler.refresh(self.model)
        rejected: list[list[int]] = []
        prompts = [prompt for prompt, _ in self.splits]
        for start in range(0, len(prompts), PROMPTS_PER_CALL):
            drawn = self.sampler.sample(prompts[start:start + PROMPTS_PER_CALL], samples=1,
                                        max_new_tokens=self.max_new_tokens,
                                        temperature=self.spec.self_play_temperature,
                                        seed=self.spec.seed * 1_000_003 + round_index * 7_919 + start)
            for group, (_, answer) in zip(drawn, self.splits[start:start + PROMPTS_PER_CALL], strict=True):
                rejected.append(_as_turn(list(group[0].token_ids), group[0].stop_token, answer))
        return self._pair(round_index, rejected)

    def _pair(self, round_index: int, rejected: list[list[int]]) -> RoundSummary:
        chosen_sequences, rejected_sequences = [], []
        for (prompt, answer), own in zip(self.splits, rejected, strict=True):
            chosen_sequences.append(_sequence(prompt, answer))
            rejected_sequences.append(_sequence(prompt, own))
        # Scored `batch_size` lines at a time, their chosen and rejected sequences in one pass.
        chosen_references: list[float] = []
        rejected_references: list[float] = []
        batch = max(1, self.spec.batch_size)
        with torch.no_grad(), self.autocast():
            for start in range(0, len(self.examples), batch):
                chosen, own = chosen_sequences[start:start + batch], rejected_sequences[start:start + batch]
                scores = self.score(chosen + own).float().tolist()
                chosen_references += scores[:len(chosen)]
                rejected_references += scores[len(chosen):]
        self.round = round_index
        self.pairs = [SelfPlayPair(*pair) for pair in zip(chosen_sequences, rejected_sequences, chosen_references,
                                                           rejected_references, strict=True)]
        self.summary = self._summarize(rejected)
        return self.summary

    def _summarize(self, rejected: list[list[int]]) -> RoundSummary:
        assert self.round is not None
        matches = sum(1 for (_, answer), own in zip(self.splits, rejected, strict=True) if own == answer)
        return RoundSummary(self.round + 1, sum(map(len, rejected)) / max(1, len(rejected)),
                            matches / max(1, len(rejected)))

    def pairs_at(self, indices: Sequence[int]) -> list[SelfPlayPair]:
        return [self.pairs[i] for i in indices]

    def state(self) -> dict[str, Any]:
        """The round's pairs as JSON (the model's answers and the reference scores), for a checkpoint."""
        assert self.round is not None
        return {"round": self.round, "rejected": [p.rejected.input_ids[len(prompt):] for p, (prompt, _) in
                                                  zip(self.pairs, self.splits, strict=True)],
                "chosen_reference": [p.chosen_reference for p in self.pairs],
                "rejected_reference": [p.rejected_reference for p in self.pairs]}

    def restore(self, state: dict[str, Any]) -> None:
        """Hold a checkpoint's round again, exactly (the saved scores, not recomputed ones)."""
        pairs = []
        for (prompt, answer), own, chosen_ref, rejected_ref in zip(
                self.splits, state["rejected"], state["chosen_reference"], state["rejected_reference"], strict=True):
            pairs.append(SelfPlayPair(_sequence(prompt, answer), _sequence(prompt, list(own)), float(chosen_ref),
                                      float(rejected_ref)))
        self.round, self.pairs = int(state["round"]), pairs
        self.summary = self._summarize([list(own) for own in state["rejected"]])


def _as_turn(own: list[int], stop_token: int | None, answer: list[int]) -> list[int]:
    """The model's own answer ended as the data's answer ends: the chat template's tokens after the
    end-of-turn token (SmolLM2's newline after `<|im_end|>`) are trained in the data's answer, so an own
    answer that stopped there gets them too; otherwise every pair would differ in them and the loss could
    separate the two by those tokens alone."""
    if stop_token is not None and own and own[-1] == stop_token and stop_token in answer:
        return own + answer[answer.index(stop_token) + 1:]
    return own


def _sequence(prompt: list[int], answer: list[int]) -> TokenizedExample:
    return TokenizedExample(prompt + answer, [IGNORE] * len(prompt) + answer)
