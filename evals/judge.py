"""The judge endpoint of `llm_judge` scorers: any OpenAI-compatible chat-completions server, through the
official `openai` SDK. Implements `evals.scoring.Judge`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from contracts.errors import InfrastructureError, InvalidRequest

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam


class JudgeClient:
    """An OpenAI-compatible chat-completions endpoint used as the judge (official `openai` SDK)."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 60.0, max_concurrency: int = 8,
                 max_retries: int = 2) -> None:
        import openai  # imported here so that modules importing scoring need not load the SDK

        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self._openai = openai
        self.base_url = base_url
        self.max_concurrency = max_concurrency
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self._client.close()

    def complete(self, model: str, system: str, user: str, *, temperature: float, max_tokens: int = 8) -> str:
        """One chat completion; the reply's text ("" when the server sent no content).

        Raises InvalidRequest (code judge_request_failed) when the judge refuses the request (unknown model, bad
        key: retrying cannot help) and InfrastructureError (code judge_unavailable) when it cannot be reached,
        times out or fails on its side (after the SDK's own retries)."""
        openai = self._openai
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": user}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        try:
            completion = self._client.chat.completions.create(
                model=model, messages=messages, temperature=temperature, max_tokens=max_tokens)
        except openai.APIStatusError as exc:
            if exc.status_code >= 500 or exc.status_code in (408, 409, 429):
                raise InfrastructureError(f"judge {self.base_url} failed: HTTP {exc.status_code}",
                                          code="judge_unavailable") from exc
            raise InvalidRequest(f"judge {self.base_url} refused the request for model {model!r}: "
                                 f"HTTP {exc.status_code}", code="judge_request_failed", param="judge_model") from exc
        except openai.APIError as exc:  # connection errors, timeouts, undecodable replies
            raise InfrastructureError(f"judge {self.base_url} unreachable: {exc}", code="judge_unavailable") from exc
        if not completion.choices:
            return ""
        return completion.choices[0].message.content or ""

    def complete_many(self, model: str, prompts: list[tuple[str, str]], *, temperature: float,
                      max_tokens: int = 8) -> list[str]:
        """(system, user) pairs -> replies in the same order, at most `max_concurrency` requests in flight."""
        if not prompts:
            return []
        workers = min(self.max_concurrency, len(prompts))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="judge") as pool:
            return list(pool.map(
                lambda pair: self.complete(model, pair[0], pair[1], temperature=temperature, max_tokens=max_tokens),
                prompts))
