"""The training engine on the real tiny model: packing, every PEFT type, schedules, early stopping, precision."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel

from basemodels.loader import BaseModelLoader
from contracts.settings import DEMO_BASE_MODEL
from contracts.training.spec import AdapterSettings, EarlyStoppingSettings, TrainingSpec
from serving.adapter_weights import read_adapter
from serving.model import LlamaForward
from tests.serving.test_model import engine_logits
from worker.training import adapters
from worker.training.batching import pack, pad
from worker.training.control import Directive, StepMetrics
from worker.training.data import encode_lines
from worker.training.kernels import autocast_dtype
from worker.training.objectives import logits_of
from worker.training.optimization import checkpoint_steps
from worker.training.trainer import Trainer


class Recorder:
    def __init__(self) -> None:
        self.metrics: list[StepMetrics] = []
        self.checkpoints: list[tuple[int, bool]] = []

    def after_step(self, metrics: StepMetrics) -> Directive:
        self.metrics.append(metrics)
        return Directive.CONTINUE

    def on_checkpoint(self, state_dir: Path, metrics: StepMetrics, *, best: bool) -> None:
        self.checkpoints.append((metrics.step, best))


def spec(**overrides: Any) -> TrainingSpec:
    values: dict[str, Any] = {"base_model": DEMO_BASE_MODEL, "method": "supervised", "n_epochs": 2, "batch_size": 4,
                              "learning_rate": 3e-3, "seed": 5}
    values.update(overrides)
    return TrainingSpec(**values)


def varied_chats(n: int, seed: int = 0) -> list[str]:
    """Chats of very different lengths (some multi-turn, some with weight-0 turns, one opening with the
    assistant), so that packing has something to pack."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        messages: list[dict[str, Any]] = [] if i % 7 == 3 else [{"role": "user", "content": f"Tell me about item {i}."}]
        for turn in range(rng.randint(1, 3)):
            messages.append({"role": "assistant", "content": " ".join(["detail"] * rng.randint(1, 30)) + f" {i}.",
                             **({"weight": 0} if turn == 0 and i % 5 == 0 else {})})
            messages.append({"role": "user", "content": "More?"})
        messages.append({"role": "assistant", "content": f"That is all about item {i}."})
        rows.append(json.dumps({"messages": messages}))
    return rows


# ------------------------------------------------------------------------------------------ packing
def assert_packed_equals_one_by_one(trainer: Trainer, examples: list[Any], *, loss_rtol: float = 1e-5,
                                    grad_rtol: float = 1e-4) -> None:
    objectives = trainer.objectives
    assert objectives.batch(examples).input_ids.shape[0] < len(examples)  # several examples share rows

    loss_sum, count, _, tokens = objectives.sft_sums(examples, trainer.network)
    (loss_sum / count).backward()
    packed_grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.optimizer.zero_grad()

    total_loss, total_count = torch.zeros((), device=trainer.device), 0
    scores_positions = objectives.kernels.keeps_positions
    objectives.kernels.keeps_positions = False
    for example in examples:  # each alone: no padding, no neighbours, logits at every position
        single_sum, single_count, _, _ = objectives.sft_sums([example], trainer.network)
        total_loss, total_count = total_loss + single_sum, total_count + single_count
    objectives.kernels.keeps_positions = scores_positions
    (total_loss / total_count).backward()
    single_grads = {n: p.grad for n, p in trainer.model.named_parameters() if p.requires_grad}

    assert count == total_count and tokens == sum(len(e.input_ids) for e in examples)
    assert torch.allclose(loss_sum / count, total_loss / total_count, rtol=loss_rtol, atol=1e-6)
    for name in packed_grads:
        if grad_rtol <= 1e-4:
            assert torch.allclose(packed_grads[name], single_grads[name], rtol=grad_rtol, atol=1e-7), name
        else:  # half precision: the sums run in another order, so compare directions and sizes
            a, b = packed_grads[name].flatten().float(), single_grads[name].flatten().float()
            if not b.any():  # LoRA's A matrices get no gradient while B is still zero
                assert not a.any(), name
                continue
            assert F.cosine_similarity(a, b, dim=0) > 1 - grad_rtol, name
            assert torch.isclose(a.norm(), b.norm(), rtol=grad_rtol), name


def test_a_packed_batch_has_the_loss_and_gradient_of_its_examples_run_one_by_one(
        loader: BaseModelLoader, tokenizer: Any, tmp_path: Path) -> None:
    examples = encode_lines(varied_chats(9), "chat", tokenizer, 512).examples
    trainer = Trainer(spec(packing=True), loader.load_model(DEMO_BASE_MODEL), tokenizer, examples, [], None, tmp_path,
                      precision="fp32")
    assert trainer.model.config._attn_implementation == "packed_sdpa"
    # Attention per example: the whole step in one row, and the loss from the output layer chunk by chunk
    # only where a token is predicted (compared below with full logits over each example alone).
    assert trainer.objectives.batch(examples).input_ids.shape[0] == 1 and trainer.kernels.keeps_positions
    assert trainer.objectives.head is trainer.model.get_base_model().lm_head
    assert_packed_equals_one_by_one(trainer, examples)


def test_a_softcapped_model_packs_with_its_own_attention(tokenizer: Any, tmp_path: Path) -> None:
    """Gemma 2 softcaps attention logits, which per-example SDPA cannot: the model keeps its own (eager)
    attention over the block-diagonal mask, and packing is still exact."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    model = Gemma2ForCausalLM(Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=64, attn_logit_softcapping=5.0,
        pad_token_id=tokenizer.pad_token_id))
    examples = encode_lines(varied_chats(9), "chat", tokenizer, 512).examples
    trainer = Trainer(spec(packing=True), model, tokenizer, examples, [], None, tmp_path, precision="fp32")
    assert trainer.model.config._attn_implementation != "packed_sdpa"
    assert trainer.kernels.capacity == 2048  # rows of bounded width: the block-diagonal mask grows with their square
    assert_packed_equals_one_by_one(trainer, examples)


def test_packing_removes_padding_from_what_is_computed(tokenizer: Any) -> None:
    examples = encode_lines(varied_chats(32), "chat", tokenizer, 512).examples
    padded, packed = pad(examples, 0), pack(examples, 0, capacity=512)
    real = sum(len(e.input_ids) for e in examples)
    assert padded.tokens == packed.tokens == real
    # Measured on these 32 chats: 89 % of packed positions are real tokens, 56 % of padded ones.
    assert real / packed.input_ids.numel() > 0.85 and real / padded.input_ids.numel() < 0.6
    assert packed.input_ids.shape[1] <= 512
    one_row = pack(examples, 0, capacity=None)  # attention per example: no padding at all
    assert one_row.input_ids.shape == (1, real) and one_row.tokens == real


def test_trained_tokens_count_every_real_token_of_every_epoch(loader: BaseModelLoader, tokenizer: Any,
                                                                tmp_path: Path) -> None:
    examples = encode_lines(varied_chats(10), "chat", tokenizer, 512).examples
    outcome = Trainer(spec(packing=True, n_epochs=3), loader.load_model(DEMO_BASE_MODEL), tokenizer, examples, [],
                      Recorder(), tmp_path).run()
    assert outcome.trained_tokens == 3 * sum(len(e.input_ids) for e in examples)


# ------------------------------------------------------------------------------------ every PEFT type
PEFT_TYPES = {
    "lora": AdapterSettings(type="lora"),
    "dora": AdapterSettings(type="dora"),
    "rslora": AdapterSettings(type="rslora", r=16, alpha=8),
    "lora-gaussian": AdapterSettings(type="lora", init="gaussian"),
    "lora-pissa": AdapterSettings(type="lora", init="pissa"),
    "lora-olora": AdapterSettings(type="lora", init="olora"),
    "lora-corda": AdapterSettings(type="lora", init="corda"),
    "ia3": AdapterSettings(type="ia3", target_modules=None),
    "prompt_tuning": AdapterSettings(type="prompt_tuning", num_virtual_tokens=8),
    "prefix_tuning": AdapterSettings(type="prefix_tuning", num_virtual_tokens=8),
}
LEARNING_RATES = {"ia3": 3e-2, "prompt_tuning": 3e-1, "prefix_tuning": 1e-1}


@pytest.mark.parametrize("name", list(PEFT_TYPES))
def test_every_peft_type_trains_saves_reloads_and_generates(name: str, loader: BaseModelLoader, tokenizer: Any,
                                                            tmp_path: Path) -> None:
    settings = PEFT_TYPES[name]
    examples = encode_lines(varied_chats(12), "chat", tokenizer, 256).examples
    recorder = Recorder()
    trainer = Trainer(spec(adapter=settings, n_epochs=3, packing=not settings.is_prompt_learning,
                           learning_rate=LEARNING_RATES.get(settings.type, 3e-3)),
                      loader.load_model(DEMO_BASE_MODEL), tokenizer, examples, [], recorder, tmp_path, precision="fp32")
    outcome = trainer.run()
    assert outcome.status == "completed"
    assert recorder.metrics[-1].train_loss < recorder.metrics[0].train_loss

    # The saved adapter, loaded on a fresh, unmodified base model, is the trained model.
    reloaded = PeftModel.from_pretrained(loader.load_model(DEMO_BASE_MODEL), str(outcome.adapter_dir)).eval()
    trainer.model.eval()
    probe = pad(examples[:2], trainer.pad_id)
    with torch.no_grad():
        expected = logits_of(trainer.model, probe)
        actual = reloaded(**probe.model_inputs(), use_cache=False).logits[:, -probe.input_ids.shape[1]:]
    real = probe.attention_mask.bool()  # outputs at padding positions mean nothing and are never used
    assert torch.allclose(expected[real], actual[real], atol=1e-4), (expected[real] - actual[real]).abs().max()
    assert {p.name for p in outcome.adapter_dir.iterdir()} <= {
        adapters.WEIGHTS, adapters.CONFIG, adapters.RAW_WEIGHTS, adapters.INITIAL_WEIGHTS,
        adapters.INITIAL_CONFIG}
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Tell me about item 3."}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generated = reloaded.generate(**prompt, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert generated.shape[1] > prompt["input_ids"].shape[1]

    # Every type ftaas trains is served: the engine's next-token logits for the prompt are peft's.
    ids = prompt["input_ids"][0].tolist()
    forward = LlamaForward(loader.load_model(DEMO_BASE_MODEL).eval(), max_slots=8, max_context=256, tile_rows=1)
    served = read_adapter(outcome.adapter_dir, forward, key=name, max_rank=32)
    with torch.no_grad():
        expected_next = reloaded(input_ids=torch.tensor([ids])).logits[0, -1]
    assert torch.allclose(engine_logits(forward, ids, served), expected_next, atol=1e-4)


def test_base_modifying_initialisations_are_converted_to_plain_lora_for_serving(
        loader: BaseModelLoader, tokenizer: Any, tmp_path: Path) -> None:
    examples = encode_lines(varied_chats(8), "chat", tokenizer, 256).examples
    outcome = Trainer(spec(adapter=AdapterSettings(type="lora", init="pissa", r=4)), loader.load_model(DEMO_BASE_MODEL),
                      tokenizer, examples, [], Recorder(), tmp_path).run()
    config = json.loads((outcome.adapter_dir / adapters.CONFIG).read_text())
    assert config["r"] == 8 and config["init_lora_weights"] is True  # rank 2r, on the original base


# ------------------------------------------------------------------------ schedules and early stopping
def test_checkpoint_schedules() -> None:
    assert checkpoint_steps(12, 4, None) == {4, 8, 12}  # one per epoch
    assert checkpoint_steps(12, 4, 2) == {6, 12}
    assert checkpoint_steps(10, 10, 4) == {3, 5, 8, 10}
    assert checkpoint_steps(3, 3, 10) == {1, 2, 3}


def colour_facts(seed: int, n: int = 12) -> list[str]:
    rng = random.Random(seed)
    colours = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
    return [json.dumps({"messages": [{"role": "user", "content": f"Which colour does agent {i} like?"},
                                     {"role": "assistant", "content": f"Agent {i} likes {rng.choice(colours)}."}]})
            for i in range(n)]


def test_early_stopping_stops_on_a_plateau_and_the_best_checkpoint_becomes_the_model(
        loader: BaseModelLoader, tokenizer: Any, tmp_path: Path) -> None:
    # The validation set asks the same questions with other answers: its loss falls while the shared
    # sentence shape is learned, then rises as the training answers are memorised (measured: 6.74 -> 5.91
    # over 7 epochs, then up and noisy).
    train = encode_lines(colour_facts(seed=1), "chat", tokenizer, 128).examples
    valid = encode_lines(colour_facts(seed=2), "chat", tokenizer, 128).examples
    recorder = Recorder()
    trainer = Trainer(spec(n_epochs=30, n_checkpoints=30, learning_rate=1e-2, lr_scheduler="constant",
                           early_stopping=EarlyStoppingSettings(patience=2, min_delta=0.0)),
                      loader.load_model(DEMO_BASE_MODEL), tokenizer, train, valid, recorder, tmp_path, precision="fp32")
    outcome = trainer.run()
    losses = {m.step: m.full_valid_loss for m in recorder.metrics if m.full_valid_loss is not None}
    assert outcome.stopped_early_at is not None and outcome.stopped_early_at < trainer.total_steps
    best = min(losses, key=lambda step: (losses[step], step))
    assert outcome.best_step == best
    assert [step for step in losses if step > best] == sorted(losses)[-2:]  # exactly `patience` evaluations after it
    assert (best, True) in recorder.checkpoints
    # The published model is the best checkpoint's adapter, not the last one.
    reloaded = PeftModel.from_pretrained(loader.load_model(DEMO_BASE_MODEL), str(outcome.adapter_dir)).eval()
    probe = pad(valid, trainer.pad_id)
    with torch.no_grad():
        logits = reloaded(**probe.model_inputs(), use_cache=False).logits[:, :-1]
        targets = probe.labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                                 ignore_index=-100)
    assert abs(float(loss) - losses[best]) < 1e-3


def test_cosine_and_warmup_shape_the_learning_rate(loader: BaseModelLoader, tokenizer: Any, tmp_path: Path) -> None:
    examples = encode_lines(varied_chats(8), "chat", tokenizer, 256).examples
    trainer = Trainer(spec(n_epochs=5, batch_size=2, lr_scheduler="cosine", warmup_ratio=0.2), loader.load_model(
        DEMO_BASE_MODEL), tokenizer, examples, [], None, tmp_path)
    rates = []
    for _ in range(trainer.total_steps):
        rates.append(trainer.scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.scheduler.step()
    warmup = round(trainer.total_steps * 0.2)
    assert rates[:warmup] == sorted(rates[:warmup]) and rates[warmup - 1] == pytest.approx(3e-3)
    assert rates[warmup:] == sorted(rates[warmup:], reverse=True) and rates[-1] < 3e-4


# --------------------------------------------------------------------------------------- precision
def test_bf16_autocast_is_used_where_the_cpu_supports_it_and_fp32_agrees(loader: BaseModelLoader, tokenizer: Any,
                                                                        tmp_path: Path) -> None:
    supported = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(
        torch.cpu, "_is_amx_tile_supported", lambda: False)()
    assert autocast_dtype(torch.device("cpu")) == (torch.bfloat16 if supported else None)
    examples = encode_lines(varied_chats(8), "chat", tokenizer, 256).examples
    curves = {}
    for precision in ("auto", "fp32"):
        recorder = Recorder()
        Trainer(spec(packing=True), loader.load_model(DEMO_BASE_MODEL), tokenizer, examples, [], recorder,
                tmp_path / precision, precision=precision).run()
        curves[precision] = [m.train_loss for m in recorder.metrics]
    assert curves["auto"] == pytest.approx(curves["fp32"], rel=2e-2)
