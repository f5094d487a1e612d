"""SPIN (self-play fine-tuning) on the tiny demo model: a line's answer is its last assistant turn, each
round pairs it with the model's own answer scored by the round's starting model, training moves the model
toward the data's answers and away from its own, and a run resumed inside a round trains on that round's
saved pairs exactly. That it helps a real model is measured in docs/training.md ("SPIN")."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from basemodels.loader import BaseModelLoader
from contracts.settings import DEMO_BASE_MODEL
from contracts.training.spec import AdapterSettings, Method, TrainingSpec, resolve_hyperparameters
from tests.worker.test_training import Recorder
from worker.jobs.results import metrics_csv
from worker.training.data import IGNORE, encode_lines
from worker.training.self_play import split_answer
from worker.training.trainer import Trainer


def chats(n: int) -> list[str]:
    return [json.dumps({"messages": [{"role": "system", "content": "Answer with the colour."},
                                     {"role": "user", "content": f"Which colour is item {i}?"},
                                     {"role": "assistant", "content": "It is blue."},
                                     {"role": "user", "content": f"And item {i + 1}?"},
                                     {"role": "assistant", "content": ["red", "green", "amber"][i % 3]}]})
            for i in range(n)]


def spec(**overrides: Any) -> TrainingSpec:
    values: dict[str, Any] = {"base_model": DEMO_BASE_MODEL, "method": "supervised", "n_epochs": 4, "batch_size": 3,
                              "learning_rate": 5e-3, "seed": 5, "adapter": AdapterSettings(r=8, alpha=16),
                              "lr_scheduler": "constant", "self_play_iterations": 2, "self_play_max_tokens": 6}
    values.update(overrides)
    return TrainingSpec(**values)


def test_the_answer_is_the_last_assistant_turn_and_the_prompt_everything_before_it(tokenizer: Any) -> None:
    example = encode_lines(chats(1), "chat", tokenizer, 256).examples[0]
    prompt, answer = split_answer(example)
    assert prompt + answer == example.input_ids[:len(prompt) + len(answer)]
    assert tokenizer.decode(answer).startswith("red")
    assert "It is blue." in tokenizer.decode(prompt)  # an earlier answer is part of the prompt
    with pytest.raises(ValueError, match="answer"):
        split_answer(type(example)(example.input_ids, [IGNORE] * len(example.labels)))


def test_the_method_option_resolves_and_refuses_what_does_not_apply() -> None:
    method = Method.model_validate({"type": "supervised", "supervised": {"self_play": {"iterations": 3}}})
    resolved = method.to_json(resolve_hyperparameters(method, 40), "chat")
    body = resolved["supervised"]
    assert body["self_play"] == {"iterations": 3, "beta": 0.1, "temperature": 1.0, "max_completion_tokens": None,
                                 "sft_epochs": 0}
    assert body["hyperparameters"]["n_epochs"] == 2 and body["hyperparameters"]["learning_rate_multiplier"] == 1.0
    assert not body["packing"] and not body["rehearsal"] and not body["stop_when_learned"]
    training = TrainingSpec.for_job(base_model="m", method=resolved, hyperparameters=body["hyperparameters"], seed=1)
    assert (training.n_epochs, training.epochs_per_iteration, training.self_play_iterations) == (6, 2, 3)
    for bad, message in [({"packing": True}, "packing"), ({"rehearsal": True}, "rehearsal"),
                         ({"adapter": {"type": "ia3"}}, "lora"),
                         ({"adapter": {"init": "pissa"}}, "pissa")]:
        with pytest.raises(ValueError, match=message):
            Method.model_validate({"type": "supervised", "supervised": {"self_play": {}, **bad}})


def _trainer(loader: BaseModelLoader, tokenizer: Any, work: Path, control: Recorder, **overrides: Any) -> Trainer:
    examples = encode_lines(chats(6), "chat", tokenizer, 256).examples
    return Trainer(spec(**overrides), loader.load_model(DEMO_BASE_MODEL), tokenizer, examples, examples[:2], control,
                   work)


def test_spin_rounds_move_the_model_toward_the_data_and_away_from_its_own_answers(
        loader: BaseModelLoader, tokenizer: Any, tmp_path: Path) -> None:
    control = Recorder()
    trainer = _trainer(loader, tokenizer, tmp_path, control)
    assert trainer.run().status == "completed"
    assert trainer.self_play is not None and trainer.self_play.round == 1
    rounds = [m.self_play_round for m in control.metrics]
    assert rounds == [1] * 4 + [2] * 4  # 6 lines, batch 3, 2 epochs per round, 2 rounds
    pairs = trainer.self_play.pairs
    with torch.no_grad(), trainer.objectives.autocast():
        policy, _ = trainer.objectives.sequence_logps(trainer.model, [p.chosen for p in pairs] + [p.rejected for p in pairs])
    chosen_gain = policy[:len(pairs)] - torch.tensor([p.chosen_reference for p in pairs])
    rejected_gain = policy[len(pairs):] - torch.tensor([p.rejected_reference for p in pairs])
    # Against round 2's reference (the model after round 1): the data's answers gained, the model's own lost.
    assert (chosen_gain > rejected_gain).all(), (chosen_gain, rejected_gain)
    # A round's first step scores the model against itself: margin 0, loss log 2 (up to bf16 rounding).
    assert control.metrics[0].train_loss == pytest.approx(math.log(2), abs=1e-3)
    assert control.metrics[4].train_loss == pytest.approx(math.log(2), abs=1e-3)
    assert all(m.response_length and m.response_length <= 6 for m in control.metrics)
    csv = metrics_csv([m.as_event_data() for m in control.metrics]).decode().splitlines()
    assert csv[0].endswith("self_play_round,response_length,self_play_matches") and csv[-1].split(",")[-3] == "2"


def test_a_spin_run_resumed_inside_a_round_trains_on_its_saved_pairs_as_an_uninterrupted_one_does(
        loader: BaseModelLoader, tokenizer: Any, tmp_path: Path) -> None:
    # one supervised pass first (SPIN improves a supervised fine-tune), then two rounds of two passes
    options = {"n_epochs": 5, "self_play_sft_epochs": 1}
    straight = Recorder()
    uninterrupted = _trainer(loader, tokenizer, tmp_path / "a", straight, **options)
    uninterrupted.run()
    assert [m.self_play_round for m in straight.metrics] == [None] * 2 + [1] * 4 + [2] * 4
    # the supervised passes report token cross-entropy (a random model: near log of the vocabulary), the rounds
    # DPO's loss, at log 2 on each round's first step
    assert straight.metrics[0].train_loss > 5 and "self_play_round" not in straight.metrics[0].as_event_data()
    assert straight.metrics[2].train_loss == pytest.approx(math.log(2), abs=1e-3)
    first_part = Recorder(pause_at=8)  # inside round 2, after its pairs were drawn
    assert _trainer(loader, tokenizer, tmp_path / "b", first_part, **options).run().status == "paused"
    state = first_part.checkpoints[-1]
    assert json.loads((state / "self_play.json").read_text())["round"] == 1
    rest = Recorder()
    resumed = _trainer(loader, tokenizer, tmp_path / "c", rest, **options)
    assert resumed.run(resume_from=state).status == "completed"
    assert [(m.step, m.train_loss) for m in first_part.metrics + rest.metrics] == \
        [(m.step, m.train_loss) for m in straight.metrics]
    expected, actual = uninterrupted.adapter_state(), resumed.adapter_state()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
