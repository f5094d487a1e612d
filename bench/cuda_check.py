"""The serving engine on a CUDA device computes what transformers computes there, and decodes what it decodes on
the CPU: the checks of tests/serving/test_precision.py in a form that needs only torch, transformers and the
engine (a bare GPU machine has no database, S3 or pytest). Exits 1 on any failure; prints one line per check.

    python bench/cuda_check.py            # on a machine with a CUDA device
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from basemodels import tiny  # noqa: E402
from serving.engine import Engine, FinishEvent, SamplingParams, Sequence, TokenEvent  # noqa: E402
from serving.model import LlamaForward, build_step  # noqa: E402
from serving.placement import native_bfloat16, serving_placement  # noqa: E402

PROMPT = "The cat was born in a town by the river and likes"


def greedy(forward: LlamaForward, prompt: list[int], tokens: int) -> list[int]:
    engine = Engine(forward, name="check", max_queue=4, prefill_tokens=4096, max_rank=8)
    out: list[int] = []
    finished: list[Any] = []
    engine.submit([Sequence(prompt, SamplingParams(max_new_tokens=tokens, temperature=0.0),
                            lambda e: out.append(e.token_id) if isinstance(e, TokenEvent) else finished.append(e))])
    engine.drain(120)
    engine.stop()
    assert finished and isinstance(finished[0], FinishEvent) and finished[0].reason == "length", finished
    return out


def last_logits(forward: LlamaForward, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return forward.forward(build_step(forward, [], [(0, ids)]))[0].float().cpu()


def main() -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    failures = 0

    def check(name: str, ok: bool, detail: str = "") -> None:
        nonlocal failures
        failures += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name}  {detail}", flush=True)

    dtype, device = serving_placement("auto", "auto")
    check("auto placement", device == "cuda" and dtype == (torch.bfloat16 if native_bfloat16("cuda") else torch.float32),
          f"{dtype} on {device}")
    path = tiny.ensure_built(Path(tempfile.mkdtemp()))
    cpu_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = AutoTokenizer.from_pretrained(path)(PROMPT)["input_ids"]
    on_cpu = greedy(LlamaForward(cpu_model, max_slots=2, max_context=128, tile_rows=64), ids, 16)
    for dtype in (torch.float32, torch.bfloat16):
        model = copy.deepcopy(cpu_model).to(dtype).to("cuda")
        with torch.inference_mode():
            expected = model(torch.tensor([ids], device="cuda")).logits[0, -1].float().cpu()
        for tile_rows in (64, 1):
            forward = LlamaForward(model, max_slots=2, max_context=128, tile_rows=tile_rows)
            placed = forward.kv.device.type == "cuda" and forward.lm_head.device.type == "cuda"
            ours = last_logits(forward, ids)
            error = (ours - expected).abs().max().item()
            bound = 1e-3 if dtype == torch.float32 else 0.05 * expected.abs().max().item()
            check(f"logits vs transformers, {dtype}, tile_rows={tile_rows}", placed and error <= bound,
                  f"max error {error:.2e} (bound {bound:.1e})")
            if dtype == torch.float32:
                check(f"greedy on CUDA = greedy on CPU, fp32, tile_rows={tile_rows}",
                      greedy(forward, ids, 16) == on_cpu)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
