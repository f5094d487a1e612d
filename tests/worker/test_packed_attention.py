"""Packed rows attend within each example only, with a kernel made for it on every device: per-example SDPA
on the CPU, FlashAttention's variable-length kernel or FlexAttention's document mask on CUDA."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from basemodels.loader import BaseModelLoader
from contracts.settings import DEMO_BASE_MODEL
from tests.worker.test_training_engine import assert_packed_equals_one_by_one, spec, varied_chats
from worker.training import attention
from worker.training.batching import pack
from worker.training.data import IGNORE, encode_lines
from worker.training.objectives import logits_of
from worker.training.trainer import Trainer

REPOSITORY = Path(__file__).resolve().parents[2]

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                   reason="needs a CUDA device (run by bench/gpu_check.sh on a GPU machine)")


def test_each_device_gets_a_kernel_that_attends_within_examples(loader: BaseModelLoader) -> None:
    from transformers.utils import is_flash_attn_2_available

    config = loader.load_model(DEMO_BASE_MODEL).config
    assert attention.for_packed_rows(config, torch.device("cpu")) == "packed_sdpa"
    cuda = torch.device("cuda", 0)
    flash = "flash_attention_2" if is_flash_attn_2_available() else "flex_attention"
    assert attention.for_packed_rows(config, cuda) == flash
    # FlashAttention computes in half precision only: an fp32 step uses FlexAttention
    assert attention.for_packed_rows(config, cuda, half_precision=False) == "flex_attention"


def test_flex_attentions_document_mask_keeps_packed_examples_apart(model_cache_dir: Path, tmp_path: Path) -> None:
    """The kernel CUDA uses without FlashAttention, on the CPU (forward only: FlexAttention has no backward
    pass on the CPU): transformers builds its block mask from the packed rows' position restarts, so a
    packed batch's token losses are those of the CPU's per-example attention, which equals running each
    example alone (tests/worker/test_training_engine.py). One packed shape: FlexAttention compiles per shape.

    In a process of its own, with an Inductor cache of its own, on torch's default threads: under xdist the
    suite computes on one thread (OMP_NUM_THREADS=1, tests/conftest.py), and on one thread the compiled CPU
    kernel parted from SDPA by 2 % on a 2-core AMD EPYC with AVX-512 BF16 (torch 2.13; matched on two
    threads there, and on one and two threads on an Intel Xeon with AMX). ftaas runs FlexAttention on CUDA
    only; this CPU run stands in for the block mask transformers builds from packed rows."""
    script = ("import sys; from tests.worker.test_packed_attention import compare_kernels; "
              "compare_kernels(sys.argv[1], sys.argv[2])")
    environment = {name: value for name, value in os.environ.items() if name != "OMP_NUM_THREADS"}
    environment["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "inductor")
    run = subprocess.run([sys.executable, "-c", script, str(model_cache_dir), str(tmp_path / "run")],
                         env=environment, cwd=REPOSITORY, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def compare_kernels(model_cache_dir: str, work_dir: str) -> None:
    """Asserts that FlexAttention's and SDPA's block-diagonal losses equal the per-example kernel's on one
    packed batch of the demo model (run by the test above in a fresh process)."""
    from basemodels.registry import BaseModelRegistry
    from contracts.settings import DEMO_BASE_MODEL_SOURCE

    loader = BaseModelLoader(BaseModelRegistry({DEMO_BASE_MODEL: DEMO_BASE_MODEL_SOURCE}), Path(model_cache_dir))
    tokenizer = loader.load_tokenizer(DEMO_BASE_MODEL)
    examples = encode_lines(varied_chats(6, seed=2), "chat", tokenizer, 256).examples
    trainer = Trainer(spec(packing=True), loader.load_model(DEMO_BASE_MODEL), tokenizer, examples, [], None,
                      Path(work_dir), precision="fp32")
    batch = pack(examples, trainer.pad_id, capacity=512)
    assert batch.input_ids.shape[0] < len(examples)
    losses = {}
    with torch.no_grad():
        for implementation in ("packed_sdpa", "flex_attention", "sdpa"):
            trainer.model.config._attn_implementation = implementation
            logits = logits_of(trainer.network, batch)[:, :-1].float()
            losses[implementation] = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), batch.labels[:, 1:], ignore_index=IGNORE, reduction="none")
    torch.testing.assert_close(losses["flex_attention"], losses["packed_sdpa"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(losses["sdpa"], losses["packed_sdpa"], rtol=1e-4, atol=1e-5)  # block-diagonal


@pytest.fixture(scope="module")
def cuda_loader(tmp_path_factory: pytest.TempPathFactory) -> BaseModelLoader:
    """Its own loader, so that the GPU check can run these tests without the suite's conftest (which needs
    the database and storage clients a bare GPU machine lacks): `pytest --noconftest -k cuda`."""
    from basemodels.registry import BaseModelRegistry
    from contracts.settings import DEMO_BASE_MODEL_SOURCE

    return BaseModelLoader(BaseModelRegistry({DEMO_BASE_MODEL: DEMO_BASE_MODEL_SOURCE}),
                           tmp_path_factory.mktemp("models"))


@requires_cuda
@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_on_cuda_packed_rows_train_like_their_examples_run_one_by_one(cuda_loader: BaseModelLoader, tmp_path: Path,
                                                                      precision: str) -> None:
    tokenizer = cuda_loader.load_tokenizer(DEMO_BASE_MODEL)
    examples = encode_lines(varied_chats(9), "chat", tokenizer, 512).examples
    model = cuda_loader.load_model(DEMO_BASE_MODEL, device="cuda:0")
    trainer = Trainer(spec(packing=True), model, tokenizer, examples, [], None, tmp_path, precision=precision)
    implementation = trainer.model.config._attn_implementation
    print(f"packed attention on CUDA ({precision}): {implementation}")
    if trainer.kernels.dtype is None:
        assert implementation == "flex_attention"
        assert_packed_equals_one_by_one(trainer, examples, loss_rtol=1e-4, grad_rtol=1e-4)
    else:  # bf16: the packed and single sums round differently
        assert implementation in ("flash_attention_2", "flex_attention")
        assert_packed_equals_one_by_one(trainer, examples, loss_rtol=2e-2, grad_rtol=2e-2)


def test_a_packed_step_builds_no_mask_and_a_model_that_hides_positions_is_an_error() -> None:
    """One row holds a whole step: transformers' block-diagonal mask over it would grow with the square of the
    step's tokens, and the per-example kernel never reads it. Padded rows still get their padding mask."""
    assert attention.packed_mask(1, 8192, 8192, attention_mask=None) is None
    padded = attention.packed_mask(2, 4, 4, attention_mask=torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]))
    assert padded is not None and padded.shape == (2, 1, 4, 4)
    module = torch.nn.Module()
    q = torch.randn(1, 2, 6, 8)
    with pytest.raises(ValueError, match="position_ids"):
        attention.packed_sdpa(module, q, q, q, None)


def test_a_sliding_window_model_keeps_its_window_on_packed_rows(tokenizer: Any, tmp_path: Path) -> None:
    """Mistral-style local attention (window 4 here, examples of 10-100 tokens): the packed step's
    loss equals the model's own eager attention over each example alone."""
    import copy

    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=4, pad_token_id=tokenizer.pad_token_id))
    reference = copy.deepcopy(model)
    reference.config._attn_implementation = "eager"
    examples = encode_lines(varied_chats(6, seed=3), "chat", tokenizer, 512).examples
    assert max(len(e.input_ids) for e in examples) > 4
    trainer = Trainer(spec(packing=True), model, tokenizer, examples, [], None, tmp_path, precision="fp32")
    assert trainer.model.config._attn_implementation == "packed_sdpa"
    loss_sum, count, _, _ = trainer.objectives.sft_sums(examples, trainer.network)

    total, total_count = torch.zeros(()), 0
    with torch.no_grad():
        for example in examples:  # the adapter starts as the identity (LoRA B = 0): the base's function
            logits = reference(input_ids=torch.tensor([example.input_ids])).logits[0, :-1]
            labels = torch.tensor(example.labels[1:])
            total += torch.nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")
            total_count += int((labels != IGNORE).sum())
    assert count == total_count
    assert torch.allclose(loss_sum.detach() / count, total / total_count, rtol=1e-5)
