"""An exported merged model is a plain transformers model that answers exactly as ftaas serves the
base model with the adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapters.export import export_merged
from adapters.lora_files import LoraAdapter, read_lora
from adapters.merge import Factors
from contracts.errors import InvalidRequest
from contracts.settings import DEMO_BASE_MODEL

PROMPTS = ["What is the capital of the lake?", "Tell me about the river town.", "Who wrote the song?"]


def test_the_exported_model_generates_what_ftaas_serves(start_serving: Any, make_adapter: Any, loader: Any,
                                                        tmp_path: Path) -> None:
    directory = make_adapter(61, r=8)
    live = start_serving(serving_dtype="float32")  # the exported model generates in float32
    served_model = live.register(directory)
    base_dir = Path(loader.resolve(DEMO_BASE_MODEL)[0])
    counted: list[tuple[int, int]] = []
    export_merged(base_dir, read_lora(directory), tmp_path / "merged", progress=lambda *p: counted.append(p))
    total = counted[0][1]  # every tensor of the base, each reported once, in order
    assert total > 0 and counted == [(done, total) for done in range(1, total + 1)]

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    client = live.client()
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
        output = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        exported = tokenizer.decode(output[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        served = client.chat.completions.create(model=served_model, messages=messages, max_tokens=12,
                                                temperature=0).choices[0].message.content
        assert exported == served, prompt
        base = client.chat.completions.create(model=DEMO_BASE_MODEL, messages=messages, max_tokens=12,
                                              temperature=0).choices[0].message.content
        assert served != base  # the adapter changes what is said: the comparison means something


def test_only_targeted_weights_change_and_a_misfit_adapter_writes_nothing(loader: Any, make_adapter: Any,
                                                                         tmp_path: Path) -> None:
    base_dir = Path(loader.resolve(DEMO_BASE_MODEL)[0])
    adapter = read_lora(make_adapter(62, r=4, targets=["q_proj"]))
    export_merged(base_dir, adapter, tmp_path / "q-only")
    with safe_open(str(base_dir / "model.safetensors"), "pt") as base, \
            safe_open(str(tmp_path / "q-only" / "model.safetensors"), "pt") as merged:
        assert set(base.keys()) == set(merged.keys())
        for name in base.keys():  # noqa: SIM118 (a safetensors reader, not a dict)
            same = torch.equal(base.get_tensor(name), merged.get_tensor(name))
            assert same == ("q_proj" not in name), name
    misfit = LoraAdapter({}, {"base_model.model.model.layers.9.self_attn.q_proj": Factors(torch.ones(128, 1),
                                                                                            torch.ones(1, 128))})
    with pytest.raises(InvalidRequest, match="does not have"):
        export_merged(base_dir, misfit, tmp_path / "misfit")
    assert not (tmp_path / "misfit").exists()


@pytest.mark.parametrize("tied", [False, True], ids=["own-output-layer", "tied-output-layer"])
def test_an_output_layer_adapter_is_folded_in_and_a_tied_output_layer_untied(loader: Any, make_adapter: Any,
                                                                              tmp_path: Path, tied: bool) -> None:
    """LoRA on the output layer (the tinker SDK's train_unembed): the exported model computes what peft does.
    On a base whose output layer is its input embeddings (SmolLM2's case; here the demo model made so), the
    export unties them: its own output layer, the embeddings unchanged, `tie_word_embeddings` false."""
    import json
    import shutil

    from peft import PeftModel
    from safetensors.torch import load_file, save_file

    base_dir = Path(loader.resolve(DEMO_BASE_MODEL)[0])
    if tied:
        tied_dir = tmp_path / "tied-base"
        shutil.copytree(base_dir, tied_dir)
        tensors = load_file(str(tied_dir / "model.safetensors"))
        del tensors["lm_head.weight"]
        save_file(tensors, str(tied_dir / "model.safetensors"), metadata={"format": "pt"})
        config = json.loads((tied_dir / "config.json").read_text())
        (tied_dir / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
        base_dir = tied_dir
    directory = make_adapter(63, r=4, targets=["q_proj", "lm_head"])
    export_merged(base_dir, read_lora(directory), tmp_path / "merged")

    ids = torch.tensor([AutoTokenizer.from_pretrained(base_dir)(PROMPTS[0])["input_ids"]])
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                                          str(directory)).eval()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    with torch.inference_mode():
        expected, ours = reference(ids).logits, merged(ids).logits
    assert torch.allclose(ours, expected, atol=1e-4), (ours - expected).abs().max()
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    assert torch.equal(merged.get_input_embeddings().weight, base.get_input_embeddings().weight)
    assert json.loads((tmp_path / "merged" / "config.json").read_text()).get("tie_word_embeddings") is False or not tied
