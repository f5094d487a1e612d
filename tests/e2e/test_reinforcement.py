"""Reinforcement fine-tuning through the official SDK on the packaged real model (SmolLM2-135M-Instruct).

The task: answer "What is a + b?" with the equation and its result only ("2 + 3 = 5"), as the system prompt
asks with one example. The base model mostly explains instead (about one reply in five is the bare equation
at temperature 1, the SDK's default). A python grader gives 1 for exactly the right equation and 0 otherwise;
the data holds only the two numbers, never an answer to imitate. The job (GRPO, "auto" learning rate, eight
samples per prompt) must at least double the held-out mean reward and reach 0.7, measured on prompts it never
saw by chat completions of the base and the tuned model, graded by the same grader through
`client.fine_tuning.alpha.graders.run`; its reward curve must rise and come back as a chart among its results.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from contracts.settings import PACKAGED_BASE_MODEL
from tests.e2e.servers import LiveServer, upload_processed, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

SYSTEM = "Reply with the equation and its result only. Example:\nUser: What is 2 + 3?\nAssistant: 2 + 3 = 5"
GRADER = {"type": "python", "name": "equation", "source": (
    "import re\n\n"
    "def grade(sample, item):\n"
    "    equation = r'\\s*%d\\s*\\+\\s*%d\\s*=\\s*%d\\s*\\.?\\s*' % (item['a'], item['b'], item['a'] + item['b'])\n"
    "    return 1.0 if re.fullmatch(equation, sample['output_text']) else 0.0\n")}
STEPS, PROMPTS_PER_STEP = 8, 4


def lines(pairs: list[tuple[int, int]]) -> bytes:
    rows = [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"What is {a} + {b}?"}],
             "a": a, "b": b} for a, b in pairs]
    return ("\n".join(json.dumps(row) for row in rows) + "\n").encode()


def split() -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[tuple[int, int]]]:
    """Training, validation and held-out pairs: no pair (in either order) in two of them."""
    pairs = [(a, b) for a in range(2, 13) for b in range(a + 1, 13)]  # 55
    random.Random(7).shuffle(pairs)
    pairs = [(a, b) if i % 2 else (b, a) for i, (a, b) in enumerate(pairs)]
    return pairs[20:20 + STEPS * PROMPTS_PER_STEP], pairs[10:20], pairs[:10]


def held_out_reward(client: Any, model: str, held_out: list[tuple[int, int]]) -> tuple[float, list[str]]:
    """Mean reward of two completions per held-out prompt at temperature 1, graded by the server."""
    rewards, replies = [], []
    for index, (a, b) in enumerate(held_out):
        completion = client.chat.completions.create(
            model=model, n=2, temperature=1.0, max_tokens=12, seed=index,
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"What is {a} + {b}?"}])
        for choice in completion.choices:
            text = choice.message.content or ""
            result = client.fine_tuning.alpha.graders.run(grader=GRADER, model_sample=text, item={"a": a, "b": b})
            assert not result.metadata.errors.python_grader_runtime_error, result.metadata.errors
            rewards.append(result.reward)
            replies.append(text)
    return sum(rewards) / len(rewards), replies


def test_a_reinforcement_job_with_a_python_grader_teaches_a_task_the_base_model_fails(embedded: LiveServer) -> None:
    client = embedded.client()
    train, valid, held_out = split()
    training_file = upload_processed(client, "equations.jsonl", lines(train))
    validation_file = upload_processed(client, "equations-valid.jsonl", lines(valid))
    assert training_file.status == "processed" and validation_file.status == "processed"
    base_reward, base_replies = held_out_reward(client, PACKAGED_BASE_MODEL, held_out)

    job = client.fine_tuning.jobs.create(
        model=PACKAGED_BASE_MODEL, training_file=training_file.id, validation_file=validation_file.id, seed=3,
        suffix="equations", method={"type": "reinforcement", "reinforcement": {
            "grader": GRADER, "max_completion_tokens": 12,
            "hyperparameters": {"n_epochs": 1, "batch_size": PROMPTS_PER_STEP, "eval_interval": 4}}})
    assert job.method.type == "reinforcement" and job.method.reinforcement.grader.type == "python"
    job = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
                   timeout=900, interval=1, what="the reinforcement job")
    assert job.status == "succeeded", job.error
    assert job.method.reinforcement.hyperparameters.learning_rate_multiplier == 2.5  # "auto"

    metrics = [e.data for e in reversed(client.fine_tuning.jobs.list_events(job.id, limit=100).data)
               if e.type == "metrics"]
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    train_rewards = [m["train_reward_mean"] for m in metrics]
    assert sum(train_rewards[-3:]) / 3 > train_rewards[0] + 0.3, train_rewards
    assert any("valid_reward_mean" in m for m in metrics) and all(m["grader_errors"] == 0 for m in metrics)

    tuned_reward, tuned_replies = held_out_reward(client, job.fine_tuned_model, held_out)
    print(f"held-out reward: base {base_reward:.3f}, tuned {tuned_reward:.3f}; training rewards {train_rewards}; "
          f"job {job.finished_at - job.created_at} s")
    assert tuned_reward >= 0.7 and tuned_reward >= 2 * base_reward, (base_reward, tuned_reward, base_replies,
                                                                       tuned_replies)

    names = {client.files.retrieve(file_id).filename: file_id for file_id in job.result_files}
    assert set(names) == {"step_metrics.csv", "reward_curve.png"}
    assert client.files.content(names["reward_curve.png"]).content.startswith(b"\x89PNG")
    header = client.files.content(names["step_metrics.csv"]).text.splitlines()[0]
    assert "train_reward_mean" in header and "valid_reward_mean" in header
