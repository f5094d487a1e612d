"""Distillation of a source model into an open one: the source answers prompts (from a job's training file, a
prompts file, or the source's stored completions), the answers become a chat training file on the ftaas
target, and a job trains the chosen base model on it.

Resumable: each answer is appended to `<state>/distill/<run>.jsonl` as it arrives, and a run started again
with the same source model, prompts and sampling asks only for what is missing. The file and the job are
made once (the state records them; the file is found again by name, size and content; the job is created
with an Idempotency-Key derived from the run).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from contracts.files.chat_lines import ChatLineError, chat_requests, prompt_of, training_line
from transfer.copy import Progress, TransferError, upload
from transfer.state import TransferState

#: Metadata key of a distilled job: the model whose answers it learns.
DISTILLED_FROM_KEY = "transfer_distilled_from"


@dataclass(frozen=True)
class Sampling:
    """How the source model answers: the same for every prompt of a run (part of the run's identity)."""

    model: str
    max_tokens: int = 512
    temperature: float = 0.0
    samples_per_prompt: int = 1


@dataclass
class DistillRun:
    prompts: list[dict[str, Any]]
    sampling: Sampling
    key: str = ""
    #: answers by (prompt index, sample index): the assistant message and its finish reason
    answers: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    #: prompts the source refused (a 4xx other than 401/429), by prompt index: the source's message
    refused: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        identity = json.dumps({"prompts": self.prompts, "sampling": self.sampling.__dict__}, sort_keys=True)
        self.key = hashlib.sha256(identity.encode()).hexdigest()[:16]

    @property
    def requests(self) -> int:
        return len(self.prompts) * self.sampling.samples_per_prompt

    def missing(self) -> list[tuple[int, int]]:
        return [(i, s) for i in range(len(self.prompts)) for s in range(self.sampling.samples_per_prompt)
                if (i, s) not in self.answers and i not in self.refused]


def unique(prompts: Iterable[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """The prompts without repeats (the same messages and tools), in their first order."""
    seen: set[str] = set()
    kept = []
    for prompt in prompts:
        if prompt is None:
            continue
        text = json.dumps(prompt, sort_keys=True)
        if text not in seen:
            seen.add(text)
            kept.append(prompt)
    return kept


def prompts_from_lines(content: bytes, origin: str) -> list[dict[str, Any]]:
    """Prompts from chat JSONL (a training file or a prompts file): each line's messages before its last
    assistant turn, with its tools. A line that is not a JSON chat line is a TransferError naming it."""
    try:
        prompts = [request for _, _, request in chat_requests(content.decode("utf-8"))]
    except UnicodeDecodeError:
        raise TransferError(f"{origin}: not UTF-8 text") from None
    except ChatLineError as exc:
        raise TransferError(f"{origin}, {exc}") from None
    return unique(prompts)


def prompts_from_stored_completions(source: Any, *, model: str | None, metadata: dict[str, str] | None,
                                    progress: Progress | None = None) -> list[dict[str, Any]]:
    """Prompts from the source's stored chat completions (their input messages; the stored-completions API
    does not return the request's tools, so these prompts have none)."""
    listed = source.chat.completions.list(**({"model": model} if model else {}),
                                          **({"metadata": metadata} if metadata else {}), limit=100)
    prompts = []
    for done, completion in enumerate(listed, start=1):
        messages = [{k: v for k, v in m.model_dump(exclude_none=True).items() if k not in ("id", "content_parts")}
                    for m in source.chat.completions.messages.list(completion.id, limit=100)]
        prompts.append(prompt_of({"messages": messages}))
        if progress is not None:
            progress("stored completions", done, None)
    return unique(prompts)


def estimate(run: DistillRun) -> tuple[int, int, int]:
    """(requests, prompt tokens, most completion tokens) still to spend, at four characters a token."""
    missing = run.missing()
    prompt_tokens = sum(math.ceil(len(json.dumps(run.prompts[i])) / 4) for i, _ in missing)
    return len(missing), prompt_tokens, len(missing) * run.sampling.max_tokens


def _answers_path(state: TransferState, run: DistillRun) -> Path:
    path = state.directory / "distill" / f"{run.key}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def load_answers(state: TransferState, run: DistillRun) -> None:
    """The answers a previous attempt of this run received (a torn last line is ignored and asked again)."""
    path = _answers_path(state, run)
    if not path.exists():
        return
    for raw in path.read_text().splitlines():
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if "refused" in record:
            run.refused[record["prompt"]] = record["refused"]
        else:
            run.answers[(record["prompt"], record["sample"])] = record["answer"]


def sample(source: Any, run: DistillRun, state: TransferState, *, concurrency: int = 4,
           progress: Callable[[int, int], None] | None = None) -> None:
    """Ask the source for every missing answer, `concurrency` requests at a time, appending each to the run's
    answers file as it arrives. Rate limits and server errors are retried by the SDK; a prompt the source
    refuses (400, 404, 422) is recorded and skipped; a rejected key or exhausted retries raise."""
    path = _answers_path(state, run)
    total = run.requests
    missing = run.missing()
    done = total - len(missing)

    def ask(index: int, number: int) -> dict[str, Any]:
        prompt = run.prompts[index]
        reply = source.chat.completions.create(
            model=run.sampling.model, messages=prompt["messages"], max_tokens=run.sampling.max_tokens,
            temperature=run.sampling.temperature,
            **({"tools": prompt["tools"]} if prompt.get("tools") else {}),
            **{key: prompt[key] for key in ("parallel_tool_calls", "response_format") if prompt.get(key) is not None})
        choice = reply.choices[0]
        message = choice.message.model_dump(exclude_none=True)
        return {"prompt": index, "sample": number, "answer": {
            "content": message.get("content"), "tool_calls": message.get("tool_calls"),
            "finish_reason": choice.finish_reason}}

    with path.open("a") as out, ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = {pool.submit(ask, index, number): (index, number) for index, number in missing}
        try:
            for future in as_completed(futures):
                index, number = futures[future]
                try:
                    record = future.result()
                except openai.AuthenticationError:
                    raise
                except openai.APIStatusError as exc:
                    if exc.status_code in (400, 404, 422):
                        record = {"prompt": index, "refused": f"HTTP {exc.status_code}: {exc.message}"}
                    else:
                        raise
                out.write(json.dumps(record) + "\n")  # only this thread writes: the requests' threads return
                out.flush()
                if "refused" in record:
                    run.refused[index] = record["refused"]
                else:
                    run.answers[(index, number)] = record["answer"]
                done += 1
                if progress is not None:
                    progress(done, total)
        except BaseException:
            for pending in futures:
                pending.cancel()
            raise


def training_file(run: DistillRun, *, include_truncated: bool) -> tuple[bytes, dict[str, int]]:
    """The answers as chat training lines (in prompt order), and what was left out by reason."""
    lines = []
    skipped: dict[str, int] = {}
    for (index, _), answer in sorted(run.answers.items()):
        reason = answer.get("finish_reason")
        if reason == "content_filter" or (reason == "length" and not include_truncated):
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        lines.append(json.dumps(training_line(run.prompts[index], answer), ensure_ascii=False))
    if run.refused:
        skipped["refused"] = len(run.refused)
    return ("\n".join(lines) + "\n").encode() if lines else b"", skipped


def publish(target: Any, run: DistillRun, state: TransferState, *, base_model: str, suffix: str | None,
            hyperparameters: dict[str, Any], include_truncated: bool, method_options: dict[str, Any] | None = None,
            seed: int | None = None) -> tuple[str, str, dict[str, int]]:
    """(file id, job id, skipped) on the target: the training file uploaded and validated, and the job created
    (supervised, with these hyperparameters and further method options), each once."""
    content, skipped = training_file(run, include_truncated=include_truncated)
    if not content:
        raise TransferError(f"no answers to train on ({skipped or 'none received'})")
    record = state.section("distill").setdefault(run.key, {})
    source_id = f"distill-{run.key}"
    digest = state.keep_bytes(content)
    files = state.section("files")
    if files.get(source_id, {}).get("sha256") != digest:  # new answers since the last upload: a new file
        files[source_id] = {"sha256": digest, "filename": f"distilled-{run.key}.jsonl", "bytes": len(content)}
        record.pop("job", None)
    state.save()
    file_id = upload(target, source_id, state)
    if record.get("job") is None:
        job = target.fine_tuning.jobs.create(
            model=base_model, training_file=file_id, **({"suffix": suffix} if suffix else {}),
            **({"seed": seed} if seed is not None else {}),
            method={"type": "supervised", "supervised": {**(method_options or {}), "hyperparameters": hyperparameters}},
            metadata={DISTILLED_FROM_KEY: run.sampling.model[:512], "transfer_distill_run": run.key},
            extra_headers={"Idempotency-Key": f"distill-{run.key}-{digest[:16]}"})
        record["job"] = job.id
        state.save()
    return file_id, record["job"], skipped
