"""QLoRA: a LoRA trained on a 4-bit NF4 base (bitsandbytes; its CPU backend here, CUDA in the GPU check) is
published as a plain LoRA and served on the unquantized base, where it does what it learned; impossible
combinations are refused at creation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel
from pydantic import ValidationError

from contracts.settings import DEMO_BASE_MODEL
from contracts.training.spec import AdapterSettings, Method
from tests.worker.test_training_engine import Recorder, colour_facts, spec
from worker.training.batching import pad
from worker.training.data import IGNORE, encode_lines
from worker.training.trainer import Trainer


def _mean_loss(model: Any, examples: list[Any], pad_id: int, *, bf16: bool = False) -> float:
    batch = pad(examples, pad_id)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(**batch.model_inputs(), use_cache=False).logits[:, :-1].float()
    return float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch.labels[:, 1:].reshape(-1),
                                 ignore_index=IGNORE))


def test_a_qlora_adapter_learns_on_the_4bit_base_and_serves_on_the_full_base(loader, tokenizer,
                                                                             tmp_path: Path) -> None:
    examples = encode_lines(colour_facts(seed=1), "chat", tokenizer, 128).examples
    pad_id = tokenizer.pad_token_id
    quantized = loader.load_model(DEMO_BASE_MODEL, quantization="nf4")
    assert sum(type(m).__name__ == "Linear4bit" for m in quantized.modules()) > 0
    settings = AdapterSettings(type="lora", r=8, alpha=16.0, quantization="nf4")
    trainer = Trainer(spec(adapter=settings, n_epochs=10, learning_rate=1e-2, batch_size=4), quantized, tokenizer,
                      examples, [], Recorder(), tmp_path / "run")
    outcome = trainer.run()
    assert outcome.status == "completed" and outcome.adapter_dir is not None

    full = loader.load_model(DEMO_BASE_MODEL)  # float32, unquantized: what serving computes with
    base_loss = _mean_loss(full, examples, pad_id)
    served = PeftModel.from_pretrained(full, outcome.adapter_dir).eval()
    served_loss = _mean_loss(served, examples, pad_id)
    trainer.model.eval()
    trained_loss = _mean_loss(trainer.model, examples, pad_id, bf16=True)  # as it trained: bf16 compute
    # It learned on the 4-bit base as much as a LoRA on the full base does, and the full base serves what it
    # learned: the expected difference is the base's quantization error under the adapter (measured:
    # docs/training.md, "QLoRA").
    lora = Trainer(spec(adapter=AdapterSettings(type="lora", r=8, alpha=16.0), n_epochs=10, learning_rate=1e-2,
                        batch_size=4), loader.load_model(DEMO_BASE_MODEL), tokenizer, examples, [], Recorder(),
                   tmp_path / "lora")
    lora.run()
    lora.model.eval()
    lora_loss = _mean_loss(lora.model, examples, pad_id, bf16=True)
    print(f"base {base_loss:.3f}, LoRA {lora_loss:.3f}, QLoRA on NF4 {trained_loss:.3f}, QLoRA served on the "
          f"full base {served_loss:.3f}")
    assert trained_loss < base_loss - 1.0, (base_loss, trained_loss)
    assert abs(trained_loss - lora_loss) < 0.15 * (base_loss - lora_loss), (lora_loss, trained_loss)
    assert abs(served_loss - trained_loss) < 0.15 * (base_loss - trained_loss), (trained_loss, served_loss)
    names = {k for k in served.state_dict() if "lora_" in k}
    assert names and all(".lora_A." in k or ".lora_B." in k for k in names)


@pytest.mark.parametrize(("adapter", "fragment"), [
    ({"type": "dora", "quantization": "nf4"}, "lora or rslora"),
    ({"type": "ia3", "quantization": "nf4"}, "lora or rslora"),
    ({"type": "lora", "init": "pissa", "quantization": "nf4"}, "pissa"),
    ({"type": "lora", "quantization": "int3"}, "nf4"),
])
def test_impossible_qlora_combinations_are_refused(adapter: dict, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        Method.model_validate({"type": "supervised", "supervised": {"adapter": adapter}})


def test_the_resolved_method_records_the_quantization() -> None:
    method = Method.model_validate({"type": "supervised", "supervised": {"adapter": {"quantization": "nf4"}}})
    assert method.to_json()["supervised"]["adapter"]["quantization"] == "nf4"
    assert "quantization" not in Method.model_validate({"type": "supervised"}).to_json()["supervised"]["adapter"]
