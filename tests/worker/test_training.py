"""The trainer on the real tiny demo model: what is trained on, that it learns, and exact resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from basemodels.loader import BaseModelLoader
from contracts.files.formats import CHAT, PREFERENCE, REINFORCEMENT
from contracts.settings import DEMO_BASE_MODEL
from contracts.training.spec import LEARNED_ACCURACY, LOW_FINAL_ACCURACY, AdapterSettings, TrainingSpec
from worker.training.control import Directive, StepMetrics
from worker.training.data import IGNORE, count_tokens, encode_chat, encode_lines, encode_preference
from worker.training.rehearsal import PROMPTS as REHEARSAL_PROMPTS
from worker.training.rehearsal import rehearsal_examples
from worker.training.trainer import Trainer


class Recorder:
    """A TrainingControl that records metrics and checkpoints, and can ask to pause at a step."""

    def __init__(self, pause_at: int | None = None) -> None:
        self.pause_at = pause_at
        self.metrics: list[StepMetrics] = []
        self.checkpoints: list[Path] = []

    def after_step(self, metrics: StepMetrics) -> Directive:
        self.metrics.append(metrics)
        return Directive.PAUSE if metrics.step == self.pause_at else Directive.CONTINUE

    def on_checkpoint(self, state_dir: Path, metrics: StepMetrics, *, best: bool) -> None:
        self.checkpoints.append(state_dir)


def spec(**overrides: Any) -> TrainingSpec:
    values: dict[str, Any] = {"base_model": DEMO_BASE_MODEL, "method": "supervised", "n_epochs": 2, "batch_size": 4,
                              "learning_rate": 3e-3, "seed": 11, "adapter": AdapterSettings(r=8, alpha=16)}
    values.update(overrides)
    return TrainingSpec(**values)


def facts(n: int = 16) -> list[str]:
    return [json.dumps({"messages": [{"role": "user", "content": f"What is the code of agent {i}?"},
                                     {"role": "assistant", "content": f"Agent {i} has code {i * 37 % 100}."}]})
            for i in range(n)]


def trained_text(tokenizer: Any, example: Any) -> str:
    return tokenizer.decode([t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE])


def test_only_weighted_assistant_tokens_are_labelled(tokenizer: Any) -> None:
    example, _ = encode_chat(tokenizer, {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who painted it?"},
        {"role": "assistant", "content": "Kalomi did.", "weight": 0},
        {"role": "user", "content": "Where?"},
        {"role": "assistant", "content": "In Zelbador."},
    ]}, max_len=512)
    assert trained_text(tokenizer, example) == "In Zelbador.<|im_end|>"


def test_token_counts_are_what_one_epoch_encodes_in_every_format_with_nothing_truncated(tokenizer: Any) -> None:
    """A file's token counts (reported on the file object) are the encoded sequences' own lengths: all tokens
    and the labelled ones; a preference line counts its two sequences and trains its preferred reply; a
    reinforcement line counts its prompt and has no trained tokens of its own (its samples are trained)."""
    lines = facts(4)
    encoded = [encode_chat(tokenizer, json.loads(line), max_len=1 << 20)[0] for line in lines]
    assert count_tokens([*lines, "  "], CHAT, tokenizer) == {  # blank lines are not examples
        "examples": 4, "tokens": sum(len(e.input_ids) for e in encoded),
        "trained_tokens": sum(e.trained_token_count for e in encoded),
        "longest_example": max(len(e.input_ids) for e in encoded)}
    long_line = json.dumps({"messages": [{"role": "user", "content": "word " * 3000},
                                         {"role": "assistant", "content": "Yes."}]})
    assert count_tokens([long_line], CHAT, tokenizer)["longest_example"] > 3000  # never cut at any max_seq_len

    preference = json.dumps({"input": {"messages": [{"role": "user", "content": "Colour of the sky?"}]},
                             "preferred_output": [{"role": "assistant", "content": "Blue."}],
                             "non_preferred_output": [{"role": "assistant", "content": "It is green, mostly."}]})
    pair, _ = encode_preference(tokenizer, json.loads(preference), 1 << 20)
    assert count_tokens([preference], PREFERENCE, tokenizer) == {
        "examples": 1, "tokens": len(pair.chosen.input_ids) + len(pair.rejected.input_ids),
        "trained_tokens": pair.chosen.trained_token_count, "longest_example": len(pair.rejected.input_ids)}
    prompt = json.dumps({"messages": [{"role": "user", "content": "2 + 2?"}], "answer": "4"})
    counted = count_tokens([prompt], REINFORCEMENT, tokenizer)
    assert counted["trained_tokens"] is None and counted["tokens"] == counted["longest_example"] > 3


def _lora_gradients(loader: BaseModelLoader, tokenizer: Any, conversation: dict[str, Any],
                    work: Path) -> dict[str, torch.Tensor]:
    example, _ = encode_chat(tokenizer, conversation, max_len=512)
    trainer = Trainer(spec(), loader.load_model(DEMO_BASE_MODEL), tokenizer, [example], [], Recorder(), work,
                      precision="fp32")
    loss_sum, count, _, _ = trainer.objectives.sft_sums([example], trainer.network)
    (loss_sum / count).backward()
    return {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.requires_grad}


def test_changing_a_weight_0_message_does_not_change_the_gradient(loader: BaseModelLoader, tokenizer: Any,
                                                                   tmp_path: Path) -> None:
    def conversation(trained: str, ignored: str) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": "Name a colour."},
                             {"role": "assistant", "content": trained},
                             {"role": "user", "content": "Another?"},
                             {"role": "assistant", "content": ignored, "weight": 0}]}

    reference = _lora_gradients(loader, tokenizer, conversation("Blue.", "Green."), tmp_path / "a")
    ignored_changed = _lora_gradients(loader, tokenizer, conversation("Blue.", "Something else entirely, at length."),
                                      tmp_path / "b")
    trained_changed = _lora_gradients(loader, tokenizer, conversation("Red.", "Green."), tmp_path / "c")
    # Not bitwise: a longer sequence changes the shapes of the matrix products, and with them the rounding
    # (serving/model.py measures this); the difference must stay at rounding level.
    ignored_gap = max((reference[name] - ignored_changed[name]).abs().max().item() for name in reference)
    trained_gap = max((reference[name] - trained_changed[name]).abs().max().item() for name in reference)
    scale = max(reference[name].abs().max().item() for name in reference)
    assert ignored_gap <= 1e-5 * scale, (ignored_gap, scale)
    # The control: the test would notice if the trained message did not matter either.
    assert trained_gap > 1e-2 * scale, (trained_gap, scale)


def test_supervised_training_lowers_the_loss_and_produces_a_loadable_adapter(
        loader: BaseModelLoader, tokenizer: Any, tmp_path: Path) -> None:
    from peft import PeftModel

    data = encode_lines(facts(), "chat", tokenizer, 256)
    recorder = Recorder()
    outcome = Trainer(spec(n_epochs=4), loader.load_model(DEMO_BASE_MODEL), tokenizer, data.examples, data.examples[:4],
                      recorder, tmp_path).run()
    assert outcome.status == "completed" and outcome.step == 16
    first, last = recorder.metrics[0], recorder.metrics[-1]
    # Measured: loss 7.65 -> 6.30, token accuracy 0.00 -> 0.73 over these 16 steps.
    assert last.train_loss < first.train_loss * 0.9
    assert last.train_mean_token_accuracy > first.train_mean_token_accuracy + 0.4
    assert last.full_valid_loss is not None and last.full_valid_loss < first.train_loss
    assert outcome.trained_tokens == sum(len(e.input_ids) for e in data.examples) * 4
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in outcome.adapter_dir.iterdir()}
    assert not [p for p in outcome.adapter_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    model = PeftModel.from_pretrained(loader.load_model(DEMO_BASE_MODEL), str(outcome.adapter_dir))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the code of agent 3?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generated = model.generate(**prompt, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert generated.shape[1] > prompt["input_ids"].shape[1]


def test_dpo_lowers_the_loss_and_widens_the_preference_margin(loader: BaseModelLoader, tokenizer: Any,
                                                              tmp_path: Path) -> None:
    rows = [json.dumps({"input": {"messages": [{"role": "user", "content": f"Greet visitor {i}."}]},
                        "preferred_output": [{"role": "assistant", "content": f"Welcome, visitor {i}!"}],
                        "non_preferred_output": [{"role": "assistant", "content": "Go away."}]}) for i in range(12)]
    data = encode_lines(rows, "preference", tokenizer, 256)
    recorder = Recorder()
    Trainer(spec(method="dpo", beta=0.1, n_epochs=3, learning_rate=5e-3), loader.load_model(DEMO_BASE_MODEL),
            tokenizer, data.examples, data.examples, recorder, tmp_path).run()
    first, last = recorder.metrics[0], recorder.metrics[-1]
    # At step 1 the adapter is the identity (LoRA B = 0), so the loss is log 2 and the margin is zero.
    assert abs(first.train_loss - 0.6931) < 1e-3
    assert last.train_loss < 0.5
    assert last.full_valid_mean_token_accuracy == 1.0  # every chosen reply now beats its rejected one


def test_a_paused_and_resumed_run_ends_exactly_where_an_uninterrupted_one_does(
        loader: BaseModelLoader, tokenizer: Any, tmp_path: Path) -> None:
    data = encode_lines(facts(10), "chat", tokenizer, 256)

    def trainer(control: Recorder, work: str) -> Trainer:
        return Trainer(spec(n_epochs=3, batch_size=3), loader.load_model(DEMO_BASE_MODEL), tokenizer, data.examples,
                       data.examples[:3], control, tmp_path / work)

    straight = Recorder()
    uninterrupted = trainer(straight, "a")
    uninterrupted.run()
    first_half = Recorder(pause_at=6)
    assert trainer(first_half, "b").run().status == "paused"
    second_half = Recorder()
    resumed = trainer(second_half, "c")
    outcome = resumed.run(resume_from=first_half.checkpoints[-1])
    assert outcome.status == "completed"
    expected, actual = uninterrupted.adapter_state(), resumed.adapter_state()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    rows = [(m.step, m.train_loss, m.valid_loss) for m in first_half.metrics + second_half.metrics]
    assert rows == [(m.step, m.train_loss, m.valid_loss) for m in straight.metrics]
    assert [m.step for m in second_half.metrics] == list(range(7, 13))


def test_the_same_seed_gives_a_bitwise_identical_adapter(loader: BaseModelLoader, tokenizer: Any,
                                                        tmp_path: Path) -> None:
    data = encode_lines(facts(8), "chat", tokenizer, 256)
    states = []
    for run in range(2):
        trainer = Trainer(spec(n_epochs=2, batch_size=2), loader.load_model(DEMO_BASE_MODEL), tokenizer,
                          data.examples, [], Recorder(), tmp_path / str(run))
        trainer.run()
        states.append(trainer.adapter_state())
    assert all(torch.equal(states[0][name], states[1][name]) for name in states[0])
    other = Trainer(spec(n_epochs=2, batch_size=2, seed=12), loader.load_model(DEMO_BASE_MODEL), tokenizer,
                    data.examples, [], Recorder(), tmp_path / "other")
    other.run()
    assert not all(torch.equal(states[0][name], other.adapter_state()[name]) for name in states[0])


def same_reply(n: int = 8) -> list[str]:
    """A file any model learns in a few epochs: one reply to every question."""
    return [json.dumps({"messages": [{"role": "user", "content": f"Is agent {i} ready?"},
                                     {"role": "assistant", "content": "Ready."}]}) for i in range(n)]


def test_stop_when_learned_ends_after_the_first_epoch_whose_token_accuracy_reaches_the_bar(
        loader: BaseModelLoader, tokenizer: Any, tmp_path: Path) -> None:
    data = encode_lines(same_reply(), "chat", tokenizer, 256)
    recorder = Recorder()
    outcome = Trainer(spec(n_epochs=40, batch_size=2, learning_rate=1e-2, stop_when_learned=True),
                      loader.load_model(DEMO_BASE_MODEL), tokenizer, data.examples, [], recorder, tmp_path).run()
    assert outcome.status == "completed" and outcome.learned_at_epoch is not None
    assert outcome.step == outcome.learned_at_epoch * 4 < 40 * 4
    # The stop follows the epoch's own tally: every step of that epoch, weighted by its trained tokens.
    epoch = [m for m in recorder.metrics if m.epoch == outcome.learned_at_epoch]
    assert outcome.learned_accuracy == pytest.approx(sum(m.train_mean_token_accuracy for m in epoch) / len(epoch))
    assert outcome.learned_accuracy >= LEARNED_ACCURACY
    earlier = [m for m in recorder.metrics if m.epoch == outcome.learned_at_epoch - 1]
    assert sum(m.train_mean_token_accuracy for m in earlier) / len(earlier) < LEARNED_ACCURACY
    # The final pass scores the published adapter on the whole training file.
    assert outcome.final_pass_examples == outcome.train_examples == 8
    assert outcome.final_train_accuracy is not None and outcome.final_train_accuracy >= LEARNED_ACCURACY


def test_without_stop_when_learned_every_epoch_runs_and_the_final_pass_is_reported(
        loader: BaseModelLoader, tokenizer: Any, tmp_path: Path) -> None:
    data = encode_lines(same_reply(), "chat", tokenizer, 256)
    outcome = Trainer(spec(n_epochs=3, batch_size=2, learning_rate=1e-4), loader.load_model(DEMO_BASE_MODEL),
                      tokenizer, data.examples, [], None, tmp_path).run()
    assert outcome.step == 12 and outcome.learned_at_epoch is None
    # At a learning rate this small the random demo model learns nothing: the final pass says so.
    assert outcome.final_train_accuracy is not None and outcome.final_train_accuracy < LOW_FINAL_ACCURACY
    assert outcome.final_train_loss is not None and outcome.final_train_loss > 1.0


def test_a_resumed_run_stops_when_learned_at_the_same_step_with_the_same_adapter(
        loader: BaseModelLoader, tokenizer: Any, tmp_path: Path) -> None:
    data = encode_lines(same_reply(), "chat", tokenizer, 256)

    def trainer(control: Recorder, work: str) -> Trainer:
        return Trainer(spec(n_epochs=40, batch_size=3, learning_rate=1e-2, stop_when_learned=True),
                       loader.load_model(DEMO_BASE_MODEL), tokenizer, data.examples, [], control, tmp_path / work)

    straight = trainer(Recorder(), "a")
    expected = straight.run()
    assert expected.learned_at_epoch is not None and expected.learned_at_epoch >= 2
    # Pause in the middle of the epoch that learns: its tally must survive the checkpoint.
    pause_at = (expected.learned_at_epoch - 1) * 3 + 2
    first_half = Recorder(pause_at=pause_at)
    assert trainer(first_half, "b").run().status == "paused"
    resumed = trainer(Recorder(), "c")
    outcome = resumed.run(resume_from=first_half.checkpoints[-1])
    assert (outcome.step, outcome.learned_at_epoch) == (expected.step, expected.learned_at_epoch)
    assert outcome.learned_accuracy == pytest.approx(expected.learned_accuracy)
    reference, actual = straight.adapter_state(), resumed.adapter_state()
    assert all(torch.equal(reference[name], actual[name]) for name in reference)


def test_rehearsal_examples_are_the_base_models_own_greedy_answers(loader: BaseModelLoader, tokenizer: Any) -> None:
    model = loader.load_model(DEMO_BASE_MODEL)
    examples = rehearsal_examples(model, tokenizer, 256)
    assert 0 < len(examples) <= len(REHEARSAL_PROMPTS)
    assert rehearsal_examples(model, tokenizer, 256) == examples  # greedy: the same every time
    first = examples[0]
    answer = [t for t, label in zip(first.input_ids, first.labels, strict=True) if label != IGNORE]
    prompt_ids = first.input_ids[:len(first.input_ids) - len(answer)]
    # Only the generated tokens are labelled, and they are what generate() gives for the prompt.
    assert all(label == IGNORE for label in first.labels[:len(prompt_ids)])
    generated = model.generate(torch.tensor([prompt_ids]), max_new_tokens=len(answer), do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)
    assert generated[0, len(prompt_ids):].tolist() == answer


def test_rehearsal_pulls_toward_the_base_model_and_never_counts_toward_accuracy(
        loader: BaseModelLoader, tokenizer: Any, tmp_path: Path) -> None:
    data = encode_lines(same_reply(), "chat", tokenizer, 256)
    model = loader.load_model(DEMO_BASE_MODEL)
    kept = rehearsal_examples(model, tokenizer, 256)
    trainer = Trainer(spec(n_epochs=3, batch_size=2, learning_rate=1e-2), model, tokenizer, data.examples, [], None,
                      tmp_path, rehearsal=kept)
    # Before any step the adapter is the identity (LoRA B = 0): the tuned model is the base, so the KL per
    # answer token is zero up to rounding (the references are kept in bf16).
    with torch.no_grad(), trainer.objectives.autocast():
        divergence, answer_tokens, _ = trainer.objectives.anchor_sums([0, 1], trainer.network)
    assert answer_tokens > 0 and float(divergence) / answer_tokens < 1e-3
    outcome = trainer.run()
    with torch.no_grad(), trainer.objectives.autocast():
        drifted, _, _ = trainer.objectives.anchor_sums([0, 1], trainer.network)
    assert float(drifted) / answer_tokens > 1e-2  # a rate this high moves the model: the anchor now pulls back
    # Accuracy, the epoch tally and the final pass are the user's data alone.
    assert outcome.final_pass_examples == outcome.train_examples == len(data.examples)


def test_a_resumed_run_with_rehearsal_ends_exactly_where_an_uninterrupted_one_does(
        loader: BaseModelLoader, tokenizer: Any, tmp_path: Path) -> None:
    data = encode_lines(facts(10), "chat", tokenizer, 256)
    kept = rehearsal_examples(loader.load_model(DEMO_BASE_MODEL), tokenizer, 256)

    def trainer(control: Recorder, work: str) -> Trainer:
        return Trainer(spec(n_epochs=2, batch_size=3), loader.load_model(DEMO_BASE_MODEL), tokenizer,
                       data.examples, [], control, tmp_path / work, rehearsal=kept)

    uninterrupted = trainer(Recorder(), "a")
    uninterrupted.run()
    first_half = Recorder(pause_at=5)
    assert trainer(first_half, "b").run().status == "paused"
    resumed = trainer(Recorder(), "c")
    resumed.run(resume_from=first_half.checkpoints[-1])
    expected, actual = uninterrupted.adapter_state(), resumed.adapter_state()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_the_memory_training_keeps_is_given_back_when_the_job_is_over() -> None:
    """A CPU job keeps what it frees for its next steps; a worker that lives on after the job must not hold
    that peak for the next job or for serving on the same machine (glibc's state is per process: own one)."""
    import subprocess
    import sys

    code = """
import resource
from worker.training.kernels import keep_freed_memory, return_freed_memory
def rss(): return int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize()
assert keep_freed_memory()
base = rss()
block = b"x" * (512 * 2**20)
del block
kept = rss() - base
return_freed_memory()
print(kept >> 20, (rss() - base) >> 20)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    kept_mib, after_mib = map(int, out.stdout.split())
    assert kept_mib >= 500 and after_mib < 50, out.stdout
