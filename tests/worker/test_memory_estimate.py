"""The memory estimate jobs are planned with: close to the peak measured on CPU for several shapes, with and
without gradient checkpointing; checkpointing chosen only where a step would not fit; a job that cannot fit
the training device fails at validation with the estimate in its error, before it queues."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from contracts.training.spec import TrainingSpec
from worker.training.memory_estimate import estimate_peak_memory
from worker.training.memory_plan import plan_memory

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
           "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True}
LLAMA_70B = {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
             "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False}
GIB = 1024 ** 3


def _spec(**overrides: object) -> TrainingSpec:
    values: dict = {"base_model": "m", "method": "supervised", "n_epochs": 1, "batch_size": 8, "learning_rate": 1e-4,
                    "seed": 1, "max_seq_len": 1024}
    return TrainingSpec(**{**values, **overrides})


@pytest.fixture(scope="module")
def measured() -> dict[tuple[bool, bool], dict]:
    """One training step of SmolLM2's width and vocabulary at half its depth (random weights; the estimate is
    a sum of per-layer terms and the output layer's, so depth changes no term's accuracy, and the step takes
    two thirds of the time), 4 x 512 tokens, keyed (checkpointing, packing): padded rows (full logits) without
    and with checkpointing, and packed rows without (the loss chunk by chunk): peak resident memory measured in
    a fresh process each (bench/train_memory.py; the full table, at SmolLM2's own shape too, is in
    docs/training.md). In fp32 on every CPU: where the CPU computes bf16 natively (auto's choice there) the
    checkpointed step measured 0.97-0.99 of the padded one (2026-12-06, AMD EPYC with AVX-512 BF16), its
    halved activations no longer above the heap's retention, so what the comparison shows would depend on
    the CPU. In fp32 on that machine: estimated/measured 0.85, 0.82, 0.82; checkpointed 0.59 and packed 0.74
    of the padded step's peak. On an Intel Xeon with AMX (2026-12-06) the padded step's peak is two-valued
    from run to run, 2.87-3.02 GB or 4.2-4.7 GB (8 runs alone, 2 in full-suite runs, with the same code,
    seed and hash seed; the trainer keeps freed memory in glibc's heap, `kernels.keep_freed_memory`, and how
    that heap grows is what differs; not explained further), while the checkpointed step measured 2.5-3.1
    GB and the packed one 2.9-3.25 GB. The assertions below hold at either of the padded step's peaks (they
    once measured it twice and kept the higher: 25 s of the suite for nothing the bounds need)."""
    from train_memory import measure

    # One after another, on one thread each: the suite runs in two workers on two cores, and three 4 GB
    # processes at once beside the other worker's servers ran the machine out of memory.
    shapes = ((False, False), (True, False), (False, True))
    return {shape: measure("smollm2-15-layers", 512, 4, *shape, threads=1, precision="fp32") for shape in shapes}


@pytest.mark.parametrize("checkpointing,packing", [(False, False), (True, False), (False, True)])
def test_the_estimate_is_close_to_the_measured_peak(measured: dict[tuple[bool, bool], dict], checkpointing: bool,
                                                     packing: bool) -> None:
    # Measured alone: 0.85-1.16 of the peak on the shapes of docs/training.md; the heap's retention varies
    # from run to run (in one full-suite run a checkpointed step peaked 30 % above its runs alone), hence the
    # lower bound. The heap term is what glibc may keep and may not: in CI on an AMD EPYC with AVX2 only the
    # packed step peaked at 2.05 GB against 2.70 estimated (1.32x), 2.42 without the heap term (1.18x). So
    # the upper bound is on the rest of the estimate, what the step itself holds: above 1.25x its peak, the
    # estimate would refuse jobs that fit.
    row = measured[(checkpointing, packing)]
    assert row["estimated"] / row["measured"] >= 0.6, row
    assert (row["estimated"] - row["estimate"]["heap"]) / row["measured"] <= 1.25, row


def test_checkpointing_and_the_chunked_loss_are_cheaper_in_the_estimate_and_in_the_measurement(
        measured: dict[tuple[bool, bool], dict]) -> None:
    padded, checkpointed, packed = measured[(False, False)], measured[(True, False)], measured[(False, True)]
    assert checkpointed["estimated"] < 0.8 * padded["estimated"] and packed["estimated"] < 0.85 * padded["estimated"]
    # Measured: on an AMD EPYC the checkpointed step peaked at 0.59-0.82 of the padded one and the packed at
    # 0.72-0.85, in every run; on the Intel Xeon at 0.66-0.69 and 0.67-0.71 where the padded step reached its
    # higher peak, but about level with it where the heap held it at its lower one (above). What holds on
    # every machine seen: neither costs more than the padded step beyond that heap's noise.
    assert checkpointed["measured"] < 1.15 * padded["measured"] and packed["measured"] < 1.2 * padded["measured"]


def test_the_chunk_size_the_estimate_counts_is_the_trainers() -> None:
    from worker.training.loss import CHUNK_ROWS
    from worker.training.memory_estimate import LOSS_CHUNK_POSITIONS

    assert LOSS_CHUNK_POSITIONS == CHUNK_ROWS


def test_only_a_cpu_step_counts_the_heaps_retention() -> None:
    spec = _spec()
    cpu = estimate_peak_memory(SMOLLM2, spec, gradient_checkpointing=True, host_memory=True)
    gpu = estimate_peak_memory(SMOLLM2, spec, gradient_checkpointing=True)
    assert gpu.heap == 0 and cpu.heap == 8 * 1024 * 30 * 576 * 16 and cpu.total == gpu.total + cpu.heap


def test_auto_turns_checkpointing_on_only_where_the_step_would_not_fit() -> None:
    spec = _spec()
    roomy = plan_memory(SMOLLM2, spec, device_bytes=80 * GIB)
    without = estimate_peak_memory(SMOLLM2, spec, gradient_checkpointing=False).total
    tight = plan_memory(SMOLLM2, spec, device_bytes=int(without / 0.85) - 1)
    assert roomy.gradient_checkpointing is False and roomy.refusal is None
    assert tight.gradient_checkpointing is True and tight.refusal is None
    asked_off = plan_memory(SMOLLM2, _spec(gradient_checkpointing=False), device_bytes=int(without / 0.85) - 1)
    assert asked_off.refusal is not None and "Try gradient_checkpointing" in asked_off.refusal
    hopeless = plan_memory(SMOLLM2, spec, device_bytes=GIB // 4)
    assert hopeless.refusal is not None and "max_seq_len" in hopeless.refusal


def test_a_model_whose_weights_do_not_fit_one_device_is_sharded_across_the_processes() -> None:
    """A 70B model in bf16 (~130 GiB of weights) on 80 GiB devices: no full copy fits, four processes
    sharing it (FSDP) do; a job that could fit one copy stays on DDP (no per-layer communication)."""
    spec = _spec(batch_size=4, max_seq_len=2048)
    single = plan_memory(LLAMA_70B, spec, device_bytes=80 * GIB)
    assert single.refusal is not None and not single.sharded
    sharded = plan_memory(LLAMA_70B, spec, device_bytes=80 * GIB, processes=4)
    assert sharded.sharded and sharded.refusal is None, sharded.refusal
    whole = estimate_peak_memory(LLAMA_70B, spec, processes=4, gradient_checkpointing=True)
    assert whole.weights > 120 * GIB
    # a quarter of the weights, plus the two layers gathered at a time (2 x 0.86 B weights in bf16: 3.2 GiB)
    assert whole.weights / 4 + 3 * GIB < sharded.estimate.weights < whole.weights / 4 + 3.5 * GIB
    assert "FSDP" in sharded.describe()
    assert not plan_memory(SMOLLM2, spec, device_bytes=80 * GIB, processes=4).sharded
    assert plan_memory(SMOLLM2, spec, device_bytes=80 * GIB, processes=4, parallelism="fsdp").sharded
    ddp_only = plan_memory(LLAMA_70B, spec, device_bytes=80 * GIB, processes=4, parallelism="ddp")
    assert ddp_only.refusal is not None and not ddp_only.sharded


def test_a_job_that_cannot_be_sharded_is_refused_with_the_reason() -> None:
    from contracts.training.spec import AdapterSettings

    ia3 = _spec(batch_size=4, max_seq_len=2048, adapter=AdapterSettings(type="ia3", target_modules=None))
    auto = plan_memory(LLAMA_70B, ia3, device_bytes=80 * GIB, processes=4)
    assert auto.refusal is not None and "could not share the weights: FSDP trains lora" in auto.refusal
    forced = plan_memory(SMOLLM2, ia3, device_bytes=80 * GIB, processes=2, parallelism="fsdp")
    assert forced.refusal is not None and "training_parallelism=fsdp" in forced.refusal


def test_a_job_that_cannot_fit_fails_at_validation_with_the_estimate(tmp_path: Path, model_cache_dir: Path) -> None:
    from tests.worker.test_runner import make_bench
    from tests.worker.test_training_engine import varied_chats

    bench = make_bench(tmp_path, model_cache_dir, training_device_memory_bytes=1024 * 1024)  # 1 MiB
    training = bench.upload(varied_chats(12))
    from api.fine_tuning.schemas import JobCreateRequest
    from api.fine_tuning.service import JobService
    from basemodels.registry import BaseModelRegistry
    from worker.jobs.preparation import advance_job

    service = JobService(bench.ctx.db, BaseModelRegistry(bench.ctx.settings.models.sources()), max_active_jobs=10,
                         max_attempts=3)
    job_id = service.create(bench.principal, JobCreateRequest(model="ftaas-tiny", training_file=training), None).id
    assert advance_job(bench.ctx, job_id) == "failed"
    job = bench.job(job_id)
    assert job.status == "failed" and job.error["code"] == "insufficient_device_memory"
    assert "GiB" in job.error["message"] and "max_seq_len" in job.error["message"]


def test_gradient_checkpointing_trains_the_same_adapter(loader, tokenizer, tmp_path: Path) -> None:
    import torch

    from contracts.settings import DEMO_BASE_MODEL
    from tests.worker.test_training_engine import Recorder, spec, varied_chats
    from worker.training.data import encode_lines
    from worker.training.trainer import Trainer

    examples = encode_lines(varied_chats(8), "chat", tokenizer, 256).examples
    runs = {}
    for checkpointing in (False, True):
        recorder = Recorder()
        trainer = Trainer(spec(n_epochs=1, packing=True, gradient_checkpointing=checkpointing),
                          loader.load_model(DEMO_BASE_MODEL), tokenizer, examples, [], recorder,
                          tmp_path / str(checkpointing), precision="fp32")
        trainer.run()
        runs[checkpointing] = ([m.train_loss for m in recorder.metrics], trainer.adapter_state())
    (losses, adapter), (losses_ckpt, adapter_ckpt) = runs[False], runs[True]
    assert losses == pytest.approx(losses_ckpt, rel=1e-5)
    for name, tensor in adapter.items():
        torch.testing.assert_close(adapter_ckpt[name], tensor, rtol=1e-4, atol=1e-6)


def test_a_job_records_its_memory_estimate_and_checkpointing(tmp_path: Path, model_cache_dir: Path) -> None:
    from api.fine_tuning.schemas import JobCreateRequest
    from api.fine_tuning.service import JobService
    from basemodels.registry import BaseModelRegistry
    from tests.worker.test_runner import make_bench
    from tests.worker.test_training_engine import varied_chats
    from worker.jobs.preparation import advance_job
    from worker.jobs.runner import run_job

    bench = make_bench(tmp_path, model_cache_dir)
    service = JobService(bench.ctx.db, BaseModelRegistry(bench.ctx.settings.models.sources()), max_active_jobs=10,
                         max_attempts=3)
    request = JobCreateRequest(model="ftaas-tiny", training_file=bench.upload(varied_chats(12)), method={
        "type": "supervised", "supervised": {"gradient_checkpointing": True,
                                             "hyperparameters": {"n_epochs": 1, "batch_size": 4}}})
    job_id = service.create(bench.principal, request, None).id
    assert advance_job(bench.ctx, job_id) == "queued"
    assert run_job(bench.ctx, job_id) == "succeeded"
    [estimate] = [m for m in bench.messages(job_id) if m.startswith("Estimated peak memory per training process")]
    assert "gradient checkpointing on" in estimate and "GiB" in estimate


def test_the_worker_plans_the_largest_step_of_its_own_data_not_the_worst_case() -> None:
    from worker.training.memory_plan import largest_step_tokens

    spec = _spec(batch_size=4, max_seq_len=1024)
    assert largest_step_tokens([10, 3000, 50, 700, 20, 40], spec) == 1024 + 700 + 50 + 40
    assert largest_step_tokens([10, 3000, 50, 700, 20, 40], spec, processes=2) == 1024 + 700
    # 10,000 short chats at a large batch fit where the worst case (every example max_seq_len long) would not
    big = _spec(batch_size=20, max_seq_len=2048)
    device = 24 * GIB
    assert plan_memory(SMOLLM2, big, device_bytes=device).refusal is not None
    assert plan_memory(SMOLLM2, big, device_bytes=device, tokens_per_step=20 * 300).refusal is None


def test_a_dpo_job_is_planned_on_its_pairs_and_runs(tmp_path: Path, model_cache_dir: Path) -> None:
    import json

    from api.fine_tuning.schemas import JobCreateRequest
    from api.fine_tuning.service import JobService
    from basemodels.registry import BaseModelRegistry
    from tests.worker.test_runner import make_bench
    from worker.jobs.preparation import advance_job
    from worker.jobs.runner import run_job

    bench = make_bench(tmp_path, model_cache_dir)
    pairs = [json.dumps({"input": {"messages": [{"role": "user", "content": f"Name colour {i}."}]},
                         "preferred_output": [{"role": "assistant", "content": f"Colour {i} is blue."}],
                         "non_preferred_output": [{"role": "assistant", "content": "I don't know."}]})
             for i in range(12)]
    service = JobService(bench.ctx.db, BaseModelRegistry(bench.ctx.settings.models.sources()), max_active_jobs=10,
                         max_attempts=3)
    request = JobCreateRequest(model="ftaas-tiny", training_file=bench.upload(pairs), method={
        "type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}})
    job_id = service.create(bench.principal, request, None).id
    assert advance_job(bench.ctx, job_id) == "queued"
    assert run_job(bench.ctx, job_id) == "succeeded", bench.job(job_id).error
    assert any(m.startswith("Estimated peak memory per training process") for m in bench.messages(job_id))
