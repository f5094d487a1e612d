"""Moving a function-calling fine-tune off OpenAI: the same dataset and the same SDK calls, on ftaas.

A dataset in OpenAI's cookbook format (a weather tool and an order-lookup tool; written here, seeded) fine-tunes
the packaged real model (SmolLM2-135M-Instruct, whose chat template renders no tools: the ftaas tool format
carries them) with `client.fine_tuning.jobs.create`, hyperparameters left at "auto". The tuned model, called
with the same `tools` and `tool_choice` left at "auto", answers held-out requests (cities, order numbers and
phrasings it never saw) with the right function and JSON arguments; the base model does not.
"""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from contracts.settings import PACKAGED_BASE_MODEL
from tests.e2e.servers import LiveServer, start_embedded, wait_for
from tests.faults import FaultProxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"]}}},
    {"type": "function", "function": {
        "name": "lookup_order", "description": "Look up the status of a customer's order.",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}},
]
SYSTEM = {"role": "system", "content": "You are the assistant of an online shop. Use the tools when they help."}
TRAIN_CITIES = ["Paris", "Berlin", "Madrid", "Tokyo", "Lagos", "Toronto"]
HELD_OUT_CITIES = ["Vienna", "Mumbai", "Chicago", "Bogota", "Helsinki", "Manila", "Athens", "Boston", "Hanoi",
                   "Quito", "Warsaw", "Perth"]
# Every training line asks in its own words, and the held-out requests in words no line used: with three
# phrasings of six order lines, a held-out phrasing was answered in prose in every one of three runs.
WEATHER_ASKS = ["What's the weather in {city}?", "How warm is it in {city} right now?", "Is it raining in {city}?",
                "Tell me the weather for {city}.", "Do I need a jacket in {city} today?", "Weather report for {city}."]
HELD_OUT_WEATHER = ["Could you check the weather in {city}?", "What is it like outside in {city} today?",
                    "Should I bring an umbrella in {city}?", "How cold is it in {city} at the moment?",
                    "I'm flying to {city}, what's the weather there?", "Give me the current conditions in {city}."]
ORDER_ASKS = ["Where is my order {order}?", "What's the status of order {order}?", "Has order {order} shipped yet?",
              "Can you track order {order} for me?", "Any update on {order}?", "When will {order} arrive?"]
HELD_OUT_ORDER = ["I'm waiting on order {order}, any news?", "Please look up order {order}.",
                  "Is {order} on its way?", "Check order {order} for me.",
                  "My package {order} hasn't come, what happened?", "Status for {order}?"]
UNITS = {"celsius": "in Celsius", "fahrenheit": "in Fahrenheit"}
CHAT = [("Thanks, that's all!", "You're welcome! Have a great day."),
        ("Hi there!", "Hello! How can I help you today?"),
        ("What can you do?", "I can check the weather in a city and look up the status of your orders.")]


def _order(rng: random.Random) -> str:
    return f"ORD-{rng.randrange(10000, 99999)}"


def _call(name: str, arguments: dict[str, Any], index: int) -> dict[str, Any]:
    return {"id": f"call_{index}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)}}


def training_lines(seed: int = 11) -> list[dict[str, Any]]:
    """Tool-calling chats in OpenAI's fine-tuning format, some with the tool's result and the final answer."""
    rng = random.Random(seed)
    lines = []
    for index in range(12):
        if index % 2 == 0:
            city, unit = TRAIN_CITIES[index // 2], list(UNITS)[index // 2 % 2]
            ask = f"{WEATHER_ASKS[index // 2].format(city=city)} {UNITS[unit]}, please."
            call = _call("get_weather", {"city": city, "unit": unit}, index)
            result, answer = json.dumps({"temperature": rng.randrange(-5, 35), "unit": unit}), None
        else:
            order = _order(rng)
            ask = ORDER_ASKS[index // 2].format(order=order)
            call = _call("lookup_order", {"order_id": order}, index)
            result, answer = json.dumps({"status": "shipped"}), f"Order {order} has shipped."
        messages = [SYSTEM, {"role": "user", "content": ask}, {"role": "assistant", "tool_calls": [call]}]
        if answer is not None and index % 4 == 1:  # some chats go on: the tool's result, then the answer
            messages += [{"role": "tool", "tool_call_id": call["id"], "content": result},
                         {"role": "assistant", "content": answer}]
        lines.append({"messages": messages, "tools": TOOLS, "parallel_tool_calls": False})
    for question, reply in CHAT:  # not every turn is a tool call
        lines.append({"messages": [SYSTEM, {"role": "user", "content": question},
                                   {"role": "assistant", "content": reply}], "tools": TOOLS})
    return lines


def held_out_requests(seed: int = 12) -> list[tuple[str, str, dict[str, Any]]]:
    """(request, expected function, expected arguments): cities, order numbers and phrasings not trained."""
    rng = random.Random(seed)
    requests = []
    for index, city in enumerate(HELD_OUT_CITIES):  # each phrasing twice, once in each unit
        unit = list(UNITS)[(index + index // len(HELD_OUT_WEATHER)) % 2]
        ask = f"{HELD_OUT_WEATHER[index % len(HELD_OUT_WEATHER)].format(city=city)} {UNITS[unit]}, please."
        requests.append((ask, "get_weather", {"city": city, "unit": unit}))
    for index in range(12):
        order = _order(rng)
        requests.append((HELD_OUT_ORDER[index % len(HELD_OUT_ORDER)].format(order=order), "lookup_order",
                         {"order_id": order}))
    return requests


def _right_calls(client: Any, model: str) -> tuple[int, list[str]]:
    from concurrent.futures import ThreadPoolExecutor

    def ask_model(ask: str) -> Any:
        return client.chat.completions.create(model=model, messages=[SYSTEM, {"role": "user", "content": ask}],
                                              tools=TOOLS, temperature=0, max_tokens=64)

    requests = held_out_requests()
    with ThreadPoolExecutor(len(requests)) as pool:  # batched by the engine, as concurrent clients are
        replies = list(pool.map(ask_model, [ask for ask, _, _ in requests]))
    right, seen = 0, []
    for (ask, name, arguments), reply in zip(requests, replies, strict=True):
        message = reply.choices[0].message
        calls = message.tool_calls or []
        ok = len(calls) == 1 and calls[0].function.name == name and _arguments(calls[0]) == arguments
        right += ok
        seen.append(f"{ask!r} -> {[(c.function.name, c.function.arguments) for c in calls] or message.content!r}")
    return right, seen


def _arguments(call: Any) -> Any:
    try:
        return json.loads(call.function.arguments)
    except ValueError:
        return None


@pytest.fixture(scope="module")
def tools_job(embedded: LiveServer) -> Any:
    """The function-calling fine-tune, trained once for this module's tests."""
    client = embedded.client()
    data = "".join(json.dumps(line) + "\n" for line in training_lines()).encode()
    uploaded = client.files.create(file=("tools.jsonl", io.BytesIO(data)), purpose="fine-tune")
    uploaded = client.files.wait_for_processing(uploaded.id, poll_interval=0.2, max_wait_seconds=120)
    # batch_size 2 where "auto" picks 1 for 15 lines, and no rehearsal (which keeps general knowledge, not
    # measured here): the same held-out score as 35 lines with everything at "auto", in a fraction of the CPU
    # time (docs/training.md). Seed 4: stopped after 3 epochs in fp32 and in bf16 where seeds 1 and 3 took 4.
    # Everything else at "auto".
    job = client.fine_tuning.jobs.create(model=PACKAGED_BASE_MODEL, training_file=uploaded.id, suffix="tools",
                                         seed=4, method={"type": "supervised", "supervised": {
                                             "hyperparameters": {"batch_size": 2}, "rehearsal": False}})
    job = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
                   timeout=1200, interval=1, what="the function-calling fine-tune")
    assert job.status == "succeeded", job.error
    return job


def test_a_function_calling_fine_tune_moves_over_unchanged(embedded: LiveServer, tools_job: Any) -> None:
    client = embedded.client()
    job = tools_job
    requests = len(held_out_requests())
    base_right, base_seen = _right_calls(client, PACKAGED_BASE_MODEL)
    tuned_right, tuned_seen = _right_calls(client, job.fine_tuned_model)
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    print(f"right tool calls on {requests} held-out requests: base {base_right}, tuned {tuned_right}; "
          f"hyperparameters {job.hyperparameters}; {job.trained_tokens} trained tokens; "
          f"{[m for m in events if 'epoch' in m.lower() or 'accuracy' in m.lower()][:4]}")
    # Measured (docs/training.md): the base model 0 of 24; the tuned model 21 or 22 of 24 under four seeds, in
    # fp32 and in bf16. Training on a CPU is not bitwise reproducible across CPUs and thread counts, and
    # misses come in pairs (a phrasing the model did not generalise to is asked twice), so the bar is two
    # thirds of the held-out requests.
    assert tuned_right >= 2 * requests / 3, "\n".join(tuned_seen)
    assert base_right <= 0.25 * requests, "\n".join(base_seen)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftaas.cli", *args], env=env, capture_output=True, text=True, check=False,
                          timeout=900, stdin=subprocess.DEVNULL)


def test_a_retiring_fine_tune_is_carried_over_distilled_and_the_copy_answers_like_it(
        embedded: LiveServer, tools_job: Any, tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> None:
    """The function-calling fine-tune plays a model about to retire, on one ftaas (the source); a second ftaas
    (the target) receives its job with `ftaas transfer copy`, learns its behaviour with `ftaas transfer
    distill` (the source model answering its own job's prompts), and `ftaas transfer compare` measures the
    distilled copy against the original on the held-out requests, as does the server's comparison (`ftaas eval
    run --compare-with`) from the original's recorded answers. Between the CLI and the source sits a proxy
    that gives the source's error paths: a rejected key (401), a 500, 429s with retry-after, a malformed file."""
    source = embedded.client()
    proxy = FaultProxy(embedded.base_url.removesuffix("/v1"))
    target_server = start_embedded(tmp_path_factory.mktemp("target") / "data", model_cache_dir,
                                   FTAAS_SERVING_DTYPE="float32")
    try:
        target = target_server.client()
        work = tmp_path_factory.mktemp("transfer")
        env = {**os.environ, "OPENAI_API_KEY": embedded.api_key, "FTAAS_BASE_URL": target_server.base_url,
               "FTAAS_API_KEY": target_server.api_key}
        # The source's faults come from a proxy in front of it: every error path of a live source.
        connection = ["--source-base-url", proxy.base_url, "--state-dir", str(work / "state")]
        mapping = ["--base-model", f"{PACKAGED_BASE_MODEL}={PACKAGED_BASE_MODEL}", "--job", tools_job.id]

        refused = _cli("transfer", "plan", *connection, *mapping, "--source-api-key", "sk-wrong", env=env)
        assert refused.returncode == 1 and "source rejected the API key (HTTP 401)" in refused.stderr, refused.stderr

        # A server error on the job listing, and the rate limit twice on the download that counts the tokens
        # (429 with retry-after): both waited out. The plan keeps what it downloaded for the copy.
        proxy.fail("/fine_tuning/jobs", 500, times=1)
        proxy.fail(f"/files/{tools_job.training_file}/content", 429, times=2, retry_after=1)
        planned = _cli("transfer", "plan", *connection, *mapping, env=env)
        assert planned.returncode == 0, planned.stderr
        assert f"{tools_job.id}  succeeded  supervised" in planned.stdout and "1 can be copied" in planned.stdout
        assert "'batch_size': 2" in planned.stdout and "seed: 4" in planned.stdout, planned.stdout

        # A training file that arrives malformed (a run without the plan's downloads): reported with the
        # source's file id, no job created.
        proxy.corrupt(f"/files/{tools_job.training_file}/content")
        broken = _cli("transfer", "copy", *connection[:2], "--state-dir", str(work / "corrupt"), *mapping, env=env)
        assert broken.returncode == 1, broken.stdout + broken.stderr
        assert f"source file {tools_job.training_file}" in broken.stdout + broken.stderr
        assert "failed the target's validation" in broken.stdout + broken.stderr
        assert list(target.fine_tuning.jobs.list()) == []
        proxy.faults.clear()

        copied = _cli("transfer", "copy", *connection, *mapping, env=env)
        assert copied.returncode == 0, copied.stderr
        statuses = [status for _, _, status in proxy.seen]
        assert statuses.count(401) == 1 and statuses.count(500) == 1 and statuses.count(429) == 2, statuses
        [carried] = list(target.fine_tuning.jobs.list())
        assert carried.metadata["transfer_source_job"] == tools_job.id and carried.seed == 4
        assert carried.method.supervised.hyperparameters.batch_size == 2
        target.fine_tuning.jobs.cancel(carried.id)  # its training is not this test's subject; the distilled job's is
        again = _cli("transfer", "copy", *connection, *mapping, env=env)
        assert again.returncode == 0 and f"{tools_job.id} -> {carried.id}  existing" in again.stdout, again.stdout
        assert [j.id for j in target.fine_tuning.jobs.list()] == [carried.id]

        # Stored completions of the retiring model, exported as a training file at the source.
        for ask, _, _ in held_out_requests()[:3]:
            source.chat.completions.create(model=tools_job.fine_tuned_model, tools=TOOLS, max_tokens=64, store=True,
                                           temperature=0, metadata={"migration": "e2e"},
                                           messages=[SYSTEM, {"role": "user", "content": ask}])
        stored = list(source.chat.completions.list(metadata={"migration": "e2e"}))
        assert len(stored) == 3 and all(c.model == tools_job.fine_tuned_model for c in stored)

        distilled = _cli("transfer", "distill", *connection, "--source-model", tools_job.fine_tuned_model,
                         "--prompts-from-job", tools_job.id, "--base-model", PACKAGED_BASE_MODEL, "--batch-size", "2",
                         "--seed", "4", "--method-options", '{"rehearsal": false}', "--max-tokens", "64",
                         "--suffix", "distilled", "--concurrency", "16", "--yes", env=env)
        assert distilled.returncode == 0, distilled.stderr
        job = wait_for(lambda: (j := target.fine_tuning.jobs.retrieve(distilled.stdout.strip())).status in (
            "succeeded", "failed") and j, timeout=1200, interval=1, what="the distilled fine-tune")
        assert job.status == "succeeded", job.error

        held_out = work / "held-out.jsonl"
        held_out.write_text("".join(json.dumps({"messages": [SYSTEM, {"role": "user", "content": ask}], "tools": TOOLS})
                                    + "\n" for ask, _, _ in held_out_requests()))
        compared = _cli("transfer", "compare", *connection, "--source-model", tools_job.fine_tuned_model,
                        "--model", job.fine_tuned_model, "--prompts-file", str(held_out), "--max-tokens", "64",
                        "--concurrency", "24", "--output", str(work / "report"), "--yes", env=env)
        assert compared.returncode == 0, compared.stderr
        summary = json.loads((work / "report" / "report.json").read_text())["summary"]
        print(compared.stdout)
        assert summary["items"] == len(held_out_requests())
        assert summary["agreement"]["rate"] >= 0.8, compared.stdout

        # The same comparison on the server, from the original's recorded answers (it may have retired by
        # now): a knowledge eval of kind comparison, its worker answering with the distilled model.
        # Twelve of the held-out requests (six cities, six orders) keep the suite's time; the client-side
        # comparison above answered all 24.
        recorded = (work / "report" / "reference.jsonl").read_text().splitlines()
        (work / "reference-12.jsonl").write_text("\n".join(recorded[:6] + recorded[12:18]) + "\n")
        on_server = _cli("eval", "run", "--model", job.fine_tuned_model, "--compare-with",
                         str(work / "reference-12.jsonl"), "--max-new-tokens", "64",
                         "--output", str(work / "server-report"), env=env)
        assert on_server.returncode == 0, on_server.stderr
        print(on_server.stdout)
        server_summary = json.loads((work / "server-report" / "report.json").read_text())["summary"]
        assert server_summary["items"] == 12 and server_summary["agreement"]["rate"] >= 0.8
        assert server_summary["tool_calls"]["names"]["n"] == 12
        assert (work / "server-report" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    finally:
        proxy.close()
        target_server.stop()
