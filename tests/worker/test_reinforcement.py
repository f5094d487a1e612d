"""Reinforcement fine-tuning's parts on the real tiny demo model: the sampler computes the adapter being
trained exactly, group advantages, the loss's direction, a run's metrics, and exact resume. That it teaches
a task is shown on the real model (tests/e2e/test_reinforcement.py): the demo model's random weights give
rewards that no policy moves far in a few steps."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from basemodels.loader import BaseModelLoader
from contracts.settings import DEMO_BASE_MODEL
from contracts.training.spec import AdapterSettings, TrainingSpec
from graders.grading import GradingContext
from serving.sampler import PolicySampler, quantized_linears
from tests.worker.test_training import Recorder
from worker.training import adapters
from worker.training.data import encode_lines
from worker.training.reinforcement import advantages
from worker.training.trainer import Trainer

#: A reward every sample of a random model earns a different share of: how close its text is to "aaaa".
CLOSE_TO_A = {"type": "text_similarity", "name": "a", "input": "{{sample.output_text}}", "reference": "{{item.target}}",
              "evaluation_metric": "fuzzy_match"}


def prompts(n: int) -> list[str]:
    return [json.dumps({"messages": [{"role": "user", "content": f"Say something, number {i}."}],
                        "target": "a a a a a a"}) for i in range(n)]


def spec(**overrides: Any) -> TrainingSpec:
    values: dict[str, Any] = {"base_model": DEMO_BASE_MODEL, "method": "reinforcement", "n_epochs": 1,
                              "batch_size": 2, "learning_rate": 1e-2, "seed": 5, "adapter": AdapterSettings(r=8, alpha=16),
                              "grader": CLOSE_TO_A, "samples_per_prompt": 4, "max_completion_tokens": 8,
                              "lr_scheduler": "constant", "eval_interval": 2, "eval_samples": 2}
    values.update(overrides)
    return TrainingSpec(**values)


def test_group_advantages_are_centred_and_scaled_and_zero_for_equal_rewards() -> None:
    assert advantages([1.0, 0.0, 0.0, 1.0]) == pytest.approx([1.0, -1.0, -1.0, 1.0], abs=1e-3)
    assert sum(advantages([0.2, 0.5, 0.9])) == pytest.approx(0.0, abs=1e-9)
    assert advantages([0.5, 0.5, 0.5]) == [0.0, 0.0, 0.0]
    assert advantages([1.0]) == [0.0]


def test_the_sampler_computes_the_adapter_being_trained_as_peft_does(loader: BaseModelLoader, tokenizer: Any) -> None:
    model = adapters.build(loader.load_model(DEMO_BASE_MODEL), AdapterSettings(r=8, alpha=16))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    sampler = PolicySampler(model, tokenizer, max_batch=8, max_context=256)
    sampler.refresh(model)
    prompt = tokenizer("Tell me about the sea.", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt])
    tuned = sampler.sample([prompt], samples=1, max_new_tokens=12, temperature=0, seed=0)[0][0]
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                              pad_token_id=tokenizer.eos_token_id)[0, len(prompt):].tolist()
    assert tuned.token_ids == expected[:len(tuned.token_ids)] and len(tuned.token_ids) >= 1
    base = sampler.sample([prompt], samples=1, max_new_tokens=12, temperature=0, seed=0, use_adapter=False)[0][0]
    with model.disable_adapter():
        plain = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                               pad_token_id=tokenizer.eos_token_id)[0, len(prompt):].tolist()
    assert base.token_ids == plain[:len(base.token_ids)] and base.token_ids != tuned.token_ids
    # Seeded sampling draws the same samples again; other seeds draw others.
    first = sampler.sample([prompt, prompt], samples=3, max_new_tokens=8, temperature=1.0, seed=3)
    again = sampler.sample([prompt, prompt], samples=3, max_new_tokens=8, temperature=1.0, seed=3)
    other = sampler.sample([prompt, prompt], samples=3, max_new_tokens=8, temperature=1.0, seed=4)
    assert [[c.token_ids for c in row] for row in first] == [[c.token_ids for c in row] for row in again]
    assert [[c.token_ids for c in row] for row in first] != [[c.token_ids for c in row] for row in other]
    sampler.close()


def trainer(loader: BaseModelLoader, tokenizer: Any, work: Path, control: Recorder, **overrides: Any) -> Trainer:
    data = encode_lines(prompts(8), "reinforcement", tokenizer, 128)
    return Trainer(spec(**overrides), loader.load_model(DEMO_BASE_MODEL), tokenizer, data.examples, data.examples[:2],
                   control, work, precision="fp32", grading=GradingContext(python_available=lambda: None))


def test_the_loss_raises_the_likelihood_of_samples_with_positive_advantage_and_lowers_the_others(
        loader: BaseModelLoader, tokenizer: Any, tmp_path: Path) -> None:
    run = trainer(loader, tokenizer, tmp_path, Recorder())
    policy = run.reinforcement
    assert policy is not None
    prompt = run.train_examples[0].prompt_ids
    sample = tokenizer("a sample the model drew", add_special_tokens=False)["input_ids"]

    def likelihood() -> float:
        with torch.no_grad():
            logits = run.model(input_ids=torch.tensor([prompt + sample]), use_cache=False).logits[0, len(prompt) - 1:-1]
        return float(torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(sample)[:, None]).sum())

    # Plain gradient steps (Adam's fixed-size steps overshoot on the demo model's random weights).
    optimizer = torch.optim.SGD(run.trainable, lr=1e-3)
    for advantage in (1.0, -1.0):
        before = likelihood()
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            loss_sum, _ = policy._loss_sums([(prompt, sample, advantage)], run.network)
            (loss_sum / len(sample)).backward()
            optimizer.step()
        assert (likelihood() - before) * advantage > 0.1, (advantage, before, likelihood())


def test_a_grpo_run_reports_its_rewards_and_publishes_an_adapter(loader: BaseModelLoader, tokenizer: Any,
                                                                tmp_path: Path) -> None:
    recorder = Recorder()
    run = trainer(loader, tokenizer, tmp_path, recorder, n_epochs=2)
    outcome = run.run()
    assert outcome.status == "completed" and outcome.step == 8
    assert all(m.train_reward_mean is not None and 0 <= m.train_reward_mean <= 1 for m in recorder.metrics)
    assert [m.step for m in recorder.metrics if m.valid_reward_mean is not None] == [2, 4, 6, 8]
    assert all(m.kl is not None and m.kl >= 0 for m in recorder.metrics) and recorder.metrics[-1].kl > 0
    assert all(0 < (m.response_length or 0) <= 8 and m.grader_errors == 0 for m in recorder.metrics)
    assert {"train_reward_mean", "kl", "response_length", "zero_variance_groups", "grader_errors"} <= set(
        recorder.metrics[-1].as_event_data())
    assert "train_mean_token_accuracy" not in recorder.metrics[-1].as_event_data()
    assert outcome.adapter_dir is not None and (outcome.adapter_dir / "adapter_config.json").is_file()


def test_a_paused_and_resumed_reinforcement_run_draws_and_learns_what_an_uninterrupted_one_does(
        loader: BaseModelLoader, tokenizer: Any, tmp_path: Path) -> None:
    straight = Recorder()
    uninterrupted = trainer(loader, tokenizer, tmp_path / "a", straight, n_epochs=2)
    uninterrupted.run()
    first_half = Recorder(pause_at=3)
    assert trainer(loader, tokenizer, tmp_path / "b", first_half, n_epochs=2).run().status == "paused"
    second_half = Recorder()
    resumed = trainer(loader, tokenizer, tmp_path / "c", second_half, n_epochs=2)
    assert resumed.run(resume_from=first_half.checkpoints[-1]).status == "completed"
    rows = [(m.step, m.train_loss, m.train_reward_mean, m.valid_reward_mean)
            for m in first_half.metrics + second_half.metrics]
    assert rows == [(m.step, m.train_loss, m.train_reward_mean, m.valid_reward_mean) for m in straight.metrics]
    expected, actual = uninterrupted.adapter_state(), resumed.adapter_state()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_on_a_4bit_base_the_sampler_computes_what_the_qlora_model_computes(loader: BaseModelLoader,
                                                                          tokenizer: Any) -> None:
    """QLoRA: the engine has no 4-bit kernel, so the sampler holds the NF4 weights dequantized once (bf16),
    the very values bitsandbytes' layers compute with: greedy output equals the 4-bit peft model's, except
    where two tokens tie in bf16 (the demo model's random weights give flat logits, and the engine sums in
    another order): there the tokens may part, with the two logits within bf16's rounding."""
    model = adapters.build(loader.load_model(DEMO_BASE_MODEL, quantization="nf4"),
                           AdapterSettings(r=8, alpha=16, quantization="nf4"))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    assert len(quantized_linears(model.get_base_model())) == 28  # 4 layers x 7 projections
    sampler = PolicySampler(model, tokenizer, max_batch=8, max_context=256, dtype=torch.bfloat16)
    assert len(quantized_linears(model.get_base_model())) == 28  # the trainer's model stays 4-bit
    sampler.refresh(model)
    prompt = tokenizer("Tell me about the sea.", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt])
    for use_adapter in (True, False):
        drawn = sampler.sample([prompt], samples=1, max_new_tokens=12, temperature=0, seed=0,
                               use_adapter=use_adapter)[0][0].token_ids
        adapter = contextlib.nullcontext() if use_adapter else model.disable_adapter()
        with adapter, torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                                      pad_token_id=tokenizer.eos_token_id)[0, len(prompt):].tolist()
            logits = model(torch.tensor([prompt + expected])).logits[0, len(prompt) - 1:].float()
        assert len(drawn) >= 1
        parted = next((i for i, (a, b) in enumerate(zip(drawn, expected, strict=False)) if a != b), None)
        if parted is not None:
            # Within bf16's rounding either way: `generate` (a KV cache) and the full forward behind `logits`
            # round differently too (measured on an AVX2-only EPYC: the generated token 0.004 below the drawn one).
            gap = float(logits[parted, expected[parted]] - logits[parted, drawn[parted]])
            assert abs(gap) < 0.02, (use_adapter, parted, gap)


def test_a_qlora_grpo_run_trains_on_the_4bit_base_and_publishes_a_plain_lora(loader: BaseModelLoader,
                                                                             tokenizer: Any, tmp_path: Path) -> None:
    recorder = Recorder()
    data = encode_lines(prompts(8), "reinforcement", tokenizer, 128)
    run = Trainer(spec(adapter=AdapterSettings(r=8, alpha=16, quantization="nf4")),
                  loader.load_model(DEMO_BASE_MODEL, quantization="nf4"), tokenizer, data.examples, data.examples[:2],
                  recorder, tmp_path, grading=GradingContext(python_available=lambda: None))
    before = {name: tensor.clone() for name, tensor in run.adapter_state().items()}
    outcome = run.run()
    assert outcome.status == "completed" and outcome.step == 4
    assert all(m.train_reward_mean is not None and m.kl is not None for m in recorder.metrics)
    after = run.adapter_state()
    assert any(not torch.equal(before[name], after[name]) for name in before)
    assert outcome.adapter_dir is not None
    saved = load_file(outcome.adapter_dir / "adapter_model.safetensors")
    assert saved and all(".lora_A." in k or ".lora_B." in k for k in saved)


def test_samples_sharing_a_prompt_compute_it_once_with_the_loss_and_gradient_of_one_pass_per_sample(
        loader: BaseModelLoader, tokenizer: Any, tmp_path: Path) -> None:
    run = trainer(loader, tokenizer, tmp_path, Recorder())
    policy = run.reinforcement
    assert policy is not None
    with torch.no_grad():
        for name, parameter in run.model.named_parameters():
            if "lora_B" in name:  # an adapter that is not the identity, so that the KL term is not zero
                parameter.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    generator = torch.Generator().manual_seed(0)
    # two prompts of different lengths (the shared pass pads the shorter on the left), three samples each
    prompts = [run.train_examples[0].prompt_ids, run.train_examples[1].prompt_ids[:-3]]
    rows = [(prompt, torch.randint(5, 200, (1 + j,), generator=generator).tolist(), float(j - 1))
            for prompt in prompts for j in range(3)]
    results = []
    for loss_sums in (policy._loss_sums, policy._row_loss_sums):
        run.model.zero_grad()
        loss, kl = loss_sums(rows, run.network)
        loss.backward()
        results.append((float(loss), kl, [p.grad.clone() for p in run.trainable]))
    (shared_loss, shared_kl, shared), (row_loss, row_kl, per_row) = results
    assert shared_loss == pytest.approx(row_loss, rel=1e-5) and shared_kl == pytest.approx(row_kl, rel=1e-5)
    assert shared_kl > 0
    for a, b in zip(shared, per_row, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))
