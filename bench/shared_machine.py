"""One machine, serving and training at once: a chat stream's speed while a fine-tuning job trains in the same
`ftaas up`, and the job's step time while the chat runs, with the machine's thread plan (contracts.machine) and
without it (`FTAAS_RESOURCES_SHARING=off`, every process on every core: what ftaas did before), side by side.

For each mode, a fresh `ftaas up` on the real model (SmolLM2-135M-Instruct, the packaged GGUF):

  1. idle serving: streamed chat completions of --tokens tokens each (min_tokens = max_tokens), one at a time;
     decode tokens/s = (tokens - 1) / (last token time - first token time), the median of --repeats;
  2. a supervised job (40 short chat lines, LoRA, many epochs) starts; its steps' wall times (`step_seconds`
     in the metrics events) before any chat are its idle step time;
  3. during training: the same chat requests, back to back, for --chat-seconds;
  4. after the chat: the job's next steps (does training take the machine back?); then the job is cancelled.

Prints per mode: tokens/s idle and while training (ratio), step seconds idle, during the chat and after it
(ratios), and the threads each step computed on.

    python bench/shared_machine.py [--tokens 64] [--repeats 3] [--chat-seconds 30] [--modes off,auto] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contracts.settings import PACKAGED_BASE_MODEL

PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper who finds a message in a bottle."}]


def training_lines() -> bytes:
    lines = []
    for i in range(40):
        lines.append({"messages": [{"role": "user", "content": f"What is the code name of project {i}?"},
                                   {"role": "assistant", "content": f"Project {i} is called Falcon-{i * 7 % 97}."}]})
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    def __init__(self, work: Path, mode: str) -> None:
        self.port = free_port()
        self.key = "sk-ftaas-bench-" + secrets.token_urlsafe(16)
        data = work / f"data-{mode}"
        env = {**os.environ, "FTAAS_DATA_DIR": str(data), "FTAAS_BOOTSTRAP_API_KEY": self.key,
               "FTAAS_RESOURCES_SHARING": mode}
        env.pop("OMP_NUM_THREADS", None)
        self.log = work / f"up-{mode}.log"
        with self.log.open("ab") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "ftaas.cli", "up", "--port", str(self.port),
                                             "--data-dir", str(data), "--verbose"], env=env, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ftaas up exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.client = OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=self.key, max_retries=0,
                             timeout=600)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)


def stream_rate(client: OpenAI, tokens: int) -> float:
    """Decode tokens/s of one streamed completion (first token to last)."""
    times = []
    stream = client.chat.completions.create(model=PACKAGED_BASE_MODEL, messages=PROMPT, max_tokens=tokens,
                                            temperature=0, stream=True, extra_body={"min_tokens": tokens})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            times.append(time.perf_counter())
    if len(times) < 2:
        raise RuntimeError("the stream produced fewer than two pieces")
    return (len(times) - 1) / (times[-1] - times[0])


def steps(client: OpenAI, job_id: str) -> dict[int, dict[str, Any]]:
    """The job's metrics so far, by step."""
    found: dict[int, dict[str, Any]] = {}
    for event in client.fine_tuning.jobs.list_events(job_id, limit=100):
        data = getattr(event, "data", None) or {}
        if event.type == "metrics" and "step_seconds" in data:
            found[int(data["step"])] = data
    return found


def run_mode(work: Path, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    service = Service(work, mode)
    try:
        client = service.client
        stream_rate(client, 8)  # load the model
        idle = [stream_rate(client, args.tokens) for _ in range(args.repeats)]
        training = client.files.create(file=("projects.jsonl", training_lines()), purpose="fine-tune")
        client.files.wait_for_processing(training.id, max_wait_seconds=120)
        job = client.fine_tuning.jobs.create(model=PACKAGED_BASE_MODEL, training_file=training.id, seed=1, method={
            "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 4},
                                                 "stop_when_learned": False, "rehearsal": False}})
        while len(steps(client, job.id)) < args.idle_steps + 2:
            status = client.fine_tuning.jobs.retrieve(job.id).status
            if status in ("failed", "cancelled", "succeeded"):
                raise RuntimeError(f"the job {status}")
            time.sleep(1)
        before = max(steps(client, job.id))
        chat_start = time.monotonic()
        during = []
        while time.monotonic() - chat_start < args.chat_seconds:
            during.append(stream_rate(client, args.tokens))
        at_end = max(steps(client, job.id))
        time.sleep(args.after_seconds)
        after_all = steps(client, job.id)
        client.fine_tuning.jobs.cancel(job.id)
    finally:
        service.stop()
    idle_steps = [after_all[s]["step_seconds"] for s in sorted(after_all) if 2 < s <= before]
    chat_steps = [after_all[s]["step_seconds"] for s in sorted(after_all) if before + 1 < s <= at_end]
    later = sorted(s for s in after_all if s > at_end + 1)
    after_steps = [after_all[s]["step_seconds"] for s in later]
    threads = {label: sorted({after_all[s].get("threads") for s in group})
               for label, group in (("idle", [s for s in after_all if 2 < s <= before]),
                                    ("chat", [s for s in after_all if before + 1 < s <= at_end]), ("after", later))}
    result = {
        "mode": mode, "tokens_per_s_idle": statistics.median(idle), "tokens_per_s_training": statistics.median(during),
        "streams_during_training": len(during), "step_s_idle": statistics.median(idle_steps),
        "step_s_chat": statistics.median(chat_steps) if chat_steps else None,
        "step_s_after": statistics.median(after_steps[1:]) if len(after_steps) > 1 else None,
        "steps": {"idle": len(idle_steps), "chat": len(chat_steps), "after": len(after_steps)},
        "step_threads": threads,
        "after_first_steps": [round(x, 3) for x in after_steps[:6]],
    }
    result["serving_ratio"] = result["tokens_per_s_training"] / result["tokens_per_s_idle"]
    if result["step_s_chat"]:
        result["training_ratio"] = result["step_s_chat"] / result["step_s_idle"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chat-seconds", type=float, default=30.0)
    parser.add_argument("--after-seconds", type=float, default=15.0)
    parser.add_argument("--idle-steps", type=int, default=8)
    parser.add_argument("--modes", default="off,auto", help="FTAAS_RESOURCES_SHARING values, run in this order")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    cpu = subprocess.run(["lscpu"], check=False, capture_output=True, text=True).stdout
    model_name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    print(f"CPU: {model_name}, {os.cpu_count()} cores; {args.tokens} tokens per stream", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="ftaas-shared-") as tmp:
        for mode in args.modes.split(","):
            result = run_mode(Path(tmp), mode, args)
            results.append(result)
            print(f"\nsharing={mode}")
            print(f"  one stream: {result['tokens_per_s_idle']:.1f} tok/s idle, {result['tokens_per_s_training']:.1f} "
                  f"while a job trains ({result['serving_ratio']:.2f}x; {result['streams_during_training']} streams)")
            chat = result["step_s_chat"]
            print(f"  training step: {result['step_s_idle']:.3f} s idle, "
                  f"{'n/a' if chat is None else f'{chat:.3f}'} s during the chat "
                  f"({result.get('training_ratio', float('nan')):.2f}x), "
                  f"{result['step_s_after'] or float('nan'):.3f} s after it; first steps after: "
                  f"{result['after_first_steps']}")
            print(f"  threads per step: {result['step_threads']}  (steps counted: {result['steps']})", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"cpu": model_name, "results": results}, indent=2))


if __name__ == "__main__":
    main()
