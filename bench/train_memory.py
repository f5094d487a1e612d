"""Peak memory of one training step, measured on CPU, against the estimate jobs are checked with.

Each configuration runs in its own process (a fresh peak): build a Llama-style model from a config (random
weights), the ftaas Trainer with a rank-8 LoRA on every Linear, and one training step on `batch` examples
of exactly `seq` tokens (the estimate's worst case), padded or packed (packed steps compute the loss chunk by
chunk from the output layer, worker.training.loss). The measured peak is the process's maximum resident
memory minus what it held after importing torch; the estimate is worker.training.memory_estimate's total.

    python bench/train_memory.py                     # the table in docs/training.md
    python bench/train_memory.py --child '{"shape": "bench-28m", "seq": 256, "batch": 4, "checkpointing": false,
                                           "packing": false}'
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: vocabulary 49152 as SmolLM2's (the logits term matters); shapes of the random models measured
SHAPES = {"bench-28m": {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 8,
                        "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 49152},
          "smollm2-shape": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                            "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152},
          # half the depth: every term of the estimate per layer as SmolLM2's, a step in two thirds of the time
          # (tests/worker/test_memory_estimate.py)
          "smollm2-15-layers": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 15,
                                "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152}}
#: (shape, seq, batch, checkpointing, packing)
CONFIGS = [("bench-28m", 256, 4, False, False), ("bench-28m", 512, 8, False, False), ("bench-28m", 512, 8, True, False),
           ("smollm2-shape", 512, 4, False, False), ("smollm2-shape", 512, 4, True, False),
           ("smollm2-shape", 1024, 8, True, False), ("bench-28m", 512, 8, False, True),
           ("smollm2-shape", 512, 4, False, True), ("smollm2-shape", 512, 4, True, True),
           ("smollm2-shape", 1024, 8, True, True)]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def child(options: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    from contracts.training.spec import TrainingSpec
    from worker.training.data import TokenizedExample
    from worker.training.kernels import autocast_dtype
    from worker.training.memory_estimate import estimate_peak_memory
    from worker.training.trainer import Trainer

    hf_logging.set_verbosity_error()
    torch.set_num_threads(options.get("threads", 2))
    base = _rss_bytes()
    precision = options.get("precision", "auto")  # "fp32": no bf16 autocast where the CPU has it
    shape = SHAPES[options["shape"]]
    config = {**shape, "max_position_embeddings": 4096, "tie_word_embeddings": False, "pad_token_id": 0,
              "bos_token_id": 1, "eos_token_id": 2}
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**config))
    spec = TrainingSpec(base_model="m", method="supervised", n_epochs=1, batch_size=options["batch"],
                        learning_rate=1e-4, seed=1, max_seq_len=options["seq"], packing=options["packing"],
                        gradient_checkpointing=options["checkpointing"])
    from tokenizers import Tokenizer, models

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0}, unk_token="<pad>")),
                                        pad_token="<pad>")
    generator = torch.Generator().manual_seed(1)
    examples = []
    for _ in range(options["batch"]):
        ids = torch.randint(3, shape["vocab_size"], (options["seq"],), generator=generator).tolist()
        examples.append(TokenizedExample(ids, list(ids)))
    with tempfile.TemporaryDirectory() as work:
        trainer = Trainer(spec, model, tokenizer, examples, [], None, Path(work), precision=precision)
        trainer._train_step(examples)  # one step: the optimizer's state exists after it, as in every later step
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    bf16 = precision == "auto" and autocast_dtype(torch.device("cpu")) == torch.bfloat16
    compute_bytes = 2 if bf16 else 4
    estimate = estimate_peak_memory(config, spec, compute_bytes=compute_bytes,
                                    gradient_checkpointing=options["checkpointing"], host_memory=True)
    return {**options, "measured": peak, "estimated": estimate.total, "estimate": estimate.to_json()}


def measure(shape: str, seq: int, batch: int, checkpointing: bool, packing: bool = False,
            threads: int = 2, precision: str = "auto") -> dict[str, Any]:
    """One configuration's peak, measured in a fresh process computing on `threads` threads (`precision`
    "fp32": without bf16 autocast where the CPU has it)."""
    options = {"shape": shape, "seq": seq, "batch": batch, "checkpointing": checkpointing, "packing": packing,
               "threads": threads, "precision": precision}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(options)], capture_output=True, text=True,
                         check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help="run one configuration in this process (JSON options)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    mib = 1024 ** 2
    print(f"{'model':<14} {'seq':>5} {'batch':>5} {'ckpt':>5} {'packed':>6} {'measured MiB':>13} {'estimated MiB':>14} "
          f"{'est/meas':>9}")
    for shape, seq, batch, checkpointing, packing in CONFIGS:
        row = measure(shape, seq, batch, checkpointing, packing)
        print(f"{shape:<14} {seq:>5} {batch:>5} {checkpointing!s:>5} {packing!s:>6} {row['measured'] / mib:>13.0f} "
              f"{row['estimated'] / mib:>14.0f} {row['estimated'] / row['measured']:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
