"""A base model whose family the serving engine does not compute (Gemma 2: attention logit softcapping)
is still a first-class base model: chat requests get a clear 400 at once (before any weights load), and
fine-tuning, its attached knowledge eval and the merged export all work, through the official SDK on
`ftaas up`."""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import torch

from basemodels import tiny
from tests.e2e.people import result_files
from tests.e2e.servers import LiveServer, start_embedded, wait_for

pytestmark = pytest.mark.slow

NAME = "gemma2-tiny"
FACTS = "builtin:fictional_people?size=2&seed=11"


def build_gemma2(model_cache_dir: Path, destination: Path) -> Path:
    """A small random Gemma 2 model (softcapping on, sliding windows) with the demo model's tokenizer."""
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny.ensure_built(model_cache_dir))
    config = Gemma2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                          sliding_window=64, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(destination, safe_serialization=True)
    tokenizer.save_pretrained(destination)
    return destination


@pytest.fixture(scope="module")
def gemma_server(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> Iterator[LiveServer]:
    folder = build_gemma2(model_cache_dir, tmp_path_factory.mktemp("gemma2") / "model")
    server = start_embedded(tmp_path_factory.mktemp("unserved") / "data", model_cache_dir,
                            FTAAS_BASE_MODELS=json.dumps({NAME: folder.as_uri()}))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tuned(gemma_server: LiveServer) -> dict[str, Any]:
    client = gemma_server.client()
    with gemma_server.http() as api:
        made = api.post("/knowledge_evals/training_files", json={"suite": FACTS})
        assert made.status_code == 200, made.text
    training = client.files.wait_for_processing(made.json()["id"], poll_interval=0.2, max_wait_seconds=60)
    job = client.fine_tuning.jobs.create(
        model=NAME, training_file=training.id, suffix="gemma",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
        extra_body={"knowledge_eval": {"suites": [FACTS]}})
    job = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
                   timeout=600, interval=1, what="the Gemma 2 fine-tune")
    assert job.status == "succeeded", job.error
    return result_files(gemma_server, job)


def test_chat_on_an_unserved_family_is_a_clear_400_before_any_weights_load(gemma_server: LiveServer) -> None:
    client = gemma_server.client()
    assert NAME in [m.id for m in client.models.list()]
    started = time.monotonic()
    for attempt in range(2):  # the second answer comes from the remembered refusal
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        error = refused.value.body
        assert error["code"] == "unsupported_model" and error["param"] == "model", error
        assert "gemma2" in error["message"] and "merged export" in error["message"], error["message"]
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=NAME, prompt="hi", max_tokens=4)
    assert time.monotonic() - started < 10


def test_training_and_its_knowledge_eval_work_on_an_unserved_family(tuned: dict[str, Any],
                                                                     gemma_server: LiveServer) -> None:
    job = tuned["job"]
    assert job.fine_tuned_model.startswith(f"ft:{NAME}:")
    report = tuned["report"]
    # Answered by transformers' generate (the engine cannot compute the family): every item has a response
    # from both models, so the report's numbers are measured, not defaulted.
    assert report["summary"]["memorization"]["mean_base"] is not None
    assert all(r["base"]["response"] is not None and r["tuned"]["response"] is not None for r in tuned["items"])
    events = [e.message for e in gemma_server.client().fine_tuning.jobs.list_events(job.id, limit=100)]
    assert any(m.startswith("Knowledge eval memorization:") for m in events), events
    with pytest.raises(openai.BadRequestError) as refused:
        gemma_server.client().chat.completions.create(model=job.fine_tuned_model, max_tokens=4,
                                                      messages=[{"role": "user", "content": "hi"}])
    assert refused.value.body["code"] == "unsupported_model"


def test_the_merged_export_of_an_unserved_family_is_the_base_plus_the_adapter(tuned: dict[str, Any],
                                                                             gemma_server: LiveServer,
                                                                             tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    client = gemma_server.client()
    model = tuned["job"].fine_tuned_model
    folders = {}
    for kind in ("merged", "adapter"):
        path = "/adapter_operations/" + client.post("/adapter_operations", cast_to=object,
                                                    body={"type": "export", "model": model, "format": kind})["id"]
        done = wait_for(lambda path=path: (o := client.get(path, cast_to=object))["status"] in ("succeeded", "failed")
                        and o, timeout=300, interval=0.5, what=f"the {kind} export")
        assert done["status"] == "succeeded", done["error"]
        content = client.files.content(done["result_file"]).read()
        with tarfile.open(fileobj=io.BytesIO(content)) as archive:
            archive.extractall(tmp_path / kind, filter="data")
        (folders[kind],) = list((tmp_path / kind).iterdir())
    merged = AutoModelForCausalLM.from_pretrained(folders["merged"], dtype=torch.float32).eval()
    assert merged.config.model_type == "gemma2"
    base_folder = Path(json.loads(gemma_server.env["FTAAS_BASE_MODELS"])[NAME].removeprefix("file://"))
    base = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32).eval()
    ids = torch.arange(5, 25)[None]
    with torch.inference_mode():
        base_logits = base(ids).logits
        reference = PeftModel.from_pretrained(base, str(folders["adapter"])).eval()(ids).logits
        merged_logits = merged(ids).logits
    assert not torch.allclose(base_logits, reference, atol=1e-4)  # the adapter changes the model
    assert torch.allclose(merged_logits, reference, atol=1e-4), (merged_logits - reference).abs().max()
