"""Reinforcement fine-tuning: group-relative policy optimisation (GRPO) with a grader as the reward.

One optimizer step over a batch of prompts:

1. sample: `samples_per_prompt` completions of every prompt from the policy (the base model with the adapter
   as it stands), by ftaas's engine over the trainer's own weights (serving.sampler), seeded by the step so
   that a resumed run draws the samples it would have drawn;
2. grade: every sample against its line with the job's grader (graders.grading; a python grader's group
   runs in one sandbox), each prompt's group as soon as its samples have ended, beside the sampling of
   the others. A sample whose grading failed (an error flag) is counted and left out of its group;
3. advantages: within each prompt's group, (reward - group mean) / (group std + 1e-4); a group whose rewards
   are all equal teaches nothing and is skipped (its share is reported);
4. loss, per completion token t of a kept sample with advantage A:

       -min(r_t A, clip(r_t, 1 - eps, 1 + eps) A) + beta * (exp(ref_t - logp_t) - (ref_t - logp_t) - 1)

   where r_t = exp(logp_t - old_t), `ref_t` is the token's log probability with the adapter switched off
   (the base model: no second copy) and the KL term is the k3 estimator (Schulman). Samples are drawn from
   the current weights and the step makes one update, so old_t is logp_t's own value (r_t = 1, gradient
   A * grad logp_t) and the clip never binds: it is there so that the formula stays the one GRPO states. The
   loss is summed over tokens and divided by the step's completion tokens (a token-level mean: a long
   sample counts by its length, as DAPO argues), then one AdamW step (gradient norm clipped at 1).

Which samples are drawn depends on the engine's kernels (the sampler's log probabilities can differ from the
trainer's in the last bits); the loss uses the trainer's own log probabilities only.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from pydantic import TypeAdapter

from basemodels.conversations import parse_tool_calls
from contracts.graders import Grader
from contracts.training.spec import TrainingSpec
from graders.grading import Grade, GradingContext, grade, model_graders_in
from graders.model_graders import ChatReply, EndpointError
from graders.samples import Sample
from worker.training.data import PromptExample

#: Bytes the loss's vocabulary-wide tensors of one forward/backward pass may take (logits, their log-softmax
#: and its gradient, in float32): rows per pass = this / (positions kept x vocabulary x 12 bytes), at least 1.
LOGITS_BUDGET_BYTES = 512 << 20
ADVANTAGE_EPSILON = 1e-4


@dataclass
class Rollout:
    """One prompt's group of samples and what came of them."""

    prompt: PromptExample
    completions: list[list[int]]
    texts: list[str]
    grades: list[Grade]
    advantages: list[float] = field(default_factory=list)

    @property
    def rewards(self) -> list[float]:
        return [g.reward for g in self.grades]


@dataclass
class ReinforcementStats:
    """What a step reports beyond its loss (docs/training.md lists them as the job's metrics)."""

    reward_mean: float = 0.0
    reward_std: float = 0.0
    kl: float = 0.0
    response_length: float = 0.0
    zero_variance_groups: float = 0.0
    grader_errors: int = 0
    samples: int = 0
    sampling_seconds: float = 0.0
    grading_seconds: float = 0.0


class Sampler(Protocol):
    """What the policy samples with (serving.sampler.PolicySampler implements it)."""

    def refresh(self, model: Any) -> None: ...

    def sample(self, prompts: Sequence[list[int]], *, samples: int, max_new_tokens: int, temperature: float,
               seed: int, use_adapter: bool = True,
               on_prompt_done: Callable[[int, list[Any]], None] | None = None) -> list[list[Any]]: ...


class GroupPolicyOptimization:
    """The reinforcement objective of one job. `model` is the peft model; `autocast` the trainer's precision
    context; `grading` the deployment's grading context."""

    def __init__(self, spec: TrainingSpec, model: Any, tokenizer: Any, sampler: Sampler, grading: GradingContext,
                 device: torch.device, pad_id: int, autocast: Callable[[], AbstractContextManager[Any]]) -> None:
        assert spec.grader is not None, "a reinforcement spec carries its grader"
        self.spec = spec
        self.model = model
        self.tokenizer = tokenizer
        self.sampler = sampler
        self.grading = grading
        self.device = device
        self.pad_id = pad_id
        self.autocast = autocast
        self.grader: Any = TypeAdapter(Grader).validate_python(spec.grader)

    # --------------------------------------------------------------------------------- rollouts
    def rollouts(self, prompts: Sequence[PromptExample], *, samples: int, seed: int) -> tuple[list[Rollout], float, float]:
        """Sample and grade (rollouts, seconds sampling, seconds spent grading after the sampling ended).

        A prompt's group is graded as soon as its samples have all ended, in a thread beside the engine,
        while the other prompts' samples are still being drawn; except where the grader asks the model
        being trained (model graders answered by the job's own base model through this sampler, which one
        thread drives), which is graded once the sampling is done."""
        started = time.monotonic()
        self.sampler.refresh(self.model)
        groups: list[Rollout | None] = [None] * len(prompts)
        beside = not (isinstance(self.grading.endpoint, BaseModelEndpoint) and model_graders_in(self.grader))
        pending: dict[int, Future[list[Grade]]] = {}
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="grading") as pool:
            def done(index: int, completions: list[Any]) -> None:
                group = groups[index] = self._group(prompts[index], completions)
                if beside:
                    pending[index] = pool.submit(grade, self.grader, [_sample(t, group.prompt.has_tools) for t in group.texts],
                                                 [group.prompt.item] * len(group.texts), self.grading)

            self.sampler.sample([p.prompt_ids for p in prompts], samples=samples,
                                max_new_tokens=self.spec.max_completion_tokens,
                                temperature=self.spec.temperature, seed=seed, on_prompt_done=done)
            sampled = time.monotonic()
            rollouts = [group for group in groups if group is not None]
            assert len(rollouts) == len(prompts), "every prompt's samples end"
            if beside:
                for index, future in pending.items():
                    rollouts[index].grades = future.result()
            else:
                flat = grade(self.grader, [_sample(t, g.prompt.has_tools) for g in rollouts for t in g.texts],
                             [g.prompt.item for g in rollouts for _ in g.texts], self.grading)
                for index, group in enumerate(rollouts):
                    group.grades = flat[index * samples:(index + 1) * samples]
        return rollouts, sampled - started, time.monotonic() - sampled

    def _group(self, prompt: PromptExample, completions: list[Any]) -> Rollout:
        ids = [list(c.token_ids) for c in completions]
        texts = [self.tokenizer.decode(c.token_ids[:-1] if c.stop_token is not None else c.token_ids,
                                       skip_special_tokens=True) for c in completions]
        return Rollout(prompt, ids, texts, [])

    def rewards(self, prompts: Sequence[PromptExample], *, samples: int, seed: int) -> tuple[float, int]:
        """(mean reward, grader errors) of `samples` samples per prompt (validation: nothing is trained)."""
        groups, _, _ = self.rollouts(prompts, samples=samples, seed=seed)
        grades = [g for group in groups for g in group.grades]
        return (sum(g.reward for g in grades) / max(1, len(grades)), sum(1 for g in grades if g.failed))

    # ------------------------------------------------------------------------------------- step
    def step(self, prompts: Sequence[PromptExample], network: Any, seed: int) -> tuple[float, int, ReinforcementStats]:
        """Sample, grade and compute the loss's gradient (the caller steps the optimizer): (mean loss per
        completion token, tokens processed, statistics)."""
        groups, sampling, grading = self.rollouts(prompts, samples=self.spec.samples_per_prompt, seed=seed)
        stats = ReinforcementStats(sampling_seconds=sampling, grading_seconds=grading)
        trained: list[tuple[list[int], list[int], float]] = []
        zero_variance = 0
        all_rewards, lengths = [], []
        for group in groups:
            kept = [(ids, g.reward) for ids, g in zip(group.completions, group.grades, strict=True) if not g.failed]
            stats.grader_errors += len(group.grades) - len(kept)
            all_rewards += [reward for _, reward in kept]
            lengths += [len(ids) for ids in group.completions]
            group.advantages = advantages([reward for _, reward in kept])
            if not any(group.advantages):
                zero_variance += 1
                continue
            trained += [(group.prompt.prompt_ids, ids, a) for (ids, _), a in zip(kept, group.advantages, strict=True)
                        if a != 0 and ids]
        stats.samples = sum(len(g.completions) for g in groups)
        stats.reward_mean = sum(all_rewards) / max(1, len(all_rewards))
        stats.reward_std = _std(all_rewards)
        stats.response_length = sum(lengths) / max(1, len(lengths))
        stats.zero_variance_groups = zero_variance / max(1, len(groups))
        tokens = sum(len(prompt) + len(ids) for prompt, ids, _ in trained)
        completion_tokens = sum(len(ids) for _, ids, _ in trained)
        if not trained:
            return 0.0, tokens, stats
        loss_total, kl_total = 0.0, 0.0
        vocabulary = int(self.model.config.vocab_size)
        trained.sort(key=lambda row: len(row[1]))  # rows of one pass differ little in length: less padding
        start = 0
        while start < len(trained):
            keep = len(trained[start][1]) + 1
            rows = max(1, LOGITS_BUDGET_BYTES // (keep * vocabulary * 12))
            # the pass's widest row decides its size: grow while the budget holds for it
            end = start + 1
            while end < len(trained) and end - start < rows * keep // (len(trained[end][1]) + 1):
                end += 1
            loss_sum, kl_sum = self._loss_sums(trained[start:end], network)
            (loss_sum / completion_tokens).backward()
            loss_total += float(loss_sum.detach())
            kl_total += kl_sum
            start = end
        stats.kl = kl_total / completion_tokens
        return loss_total / completion_tokens, tokens, stats

    def _loss_sums(self, rows: list[tuple[list[int], list[int], float]], network: Any) -> tuple[torch.Tensor, float]:
        """(sum of the per-token loss, sum of the per-token KL) over `rows` of (prompt, completion, advantage).

        Rows sharing a prompt (a group's samples) compute it once: the prompt's forward pass gives its keys
        and values, repeated for each sample, and the samples' tokens run after them; the gradient flows
        back through the shared keys and values into the one prompt pass, so it is the sum of what each row
        computed alone would give (tested against the one-row-per-sample passes). The prompt is most of a
        row's tokens in RFT (a system prompt and a question against a short answer). Without a cache
        (gradient checkpointing), each row computes its prompt."""
        if getattr(self.model, "is_gradient_checkpointing", False):
            return self._row_loss_sums(rows, network)
        prompts: dict[tuple[int, ...], int] = {}
        for prompt, _, _ in rows:
            prompts.setdefault(tuple(prompt), len(prompts))
        # One pass over the distinct prompts (padded on the left, so each ends at the last position), then one
        # over every sample's tokens after its prompt's keys and values.
        longest = max(len(p) for p in prompts)
        prompt_ids = torch.full((len(prompts), longest), self.pad_id, dtype=torch.long)
        prompt_attention = torch.zeros((len(prompts), longest), dtype=torch.long)
        for prompt, index in prompts.items():
            prompt_ids[index, longest - len(prompt):] = torch.tensor(prompt)
            prompt_attention[index, longest - len(prompt):] = 1
        owner = torch.tensor([prompts[tuple(prompt)] for prompt, _, _ in rows])
        width = max(len(ids) for _, ids, _ in rows)
        completions = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        completion_attention = torch.zeros((len(rows), width), dtype=torch.long)
        for row, (_, ids, _) in enumerate(rows):
            completions[row, :len(ids)] = torch.tensor(ids)
            completion_attention[row, :len(ids)] = 1
        lengths = prompt_attention.sum(-1)
        prompt_positions = (prompt_attention.cumsum(-1) - 1).clamp(min=0)
        positions = lengths[owner].unsqueeze(1) + torch.arange(width).unsqueeze(0)
        attention = torch.cat([prompt_attention[owner], completion_attention], dim=1)
        device = self.device
        prompt_ids, prompt_attention, prompt_positions = (prompt_ids.to(device), prompt_attention.to(device),
                                                          prompt_positions.to(device))
        completions, attention, positions = completions.to(device), attention.to(device), positions.to(device)
        mask = completion_attention.to(device, torch.float32)
        owner = owner.to(device)
        advantage = torch.tensor([a for _, _, a in rows], device=device).unsqueeze(1)

        def token_logprobs(model: Any) -> torch.Tensor:
            head = model(input_ids=prompt_ids, attention_mask=prompt_attention, position_ids=prompt_positions,
                         use_cache=True, logits_to_keep=1)
            cache = head.past_key_values
            cache.batch_select_indices(owner)
            tail = model(input_ids=completions, attention_mask=attention, position_ids=positions,
                         past_key_values=cache, use_cache=True).logits
            # token 0 is predicted at its prompt's last position, token j at the completion's position j - 1
            logits = torch.cat([head.logits[owner, -1:], tail[:, :-1]], dim=1)
            return _token_logprobs(logits, completions)

        with torch.no_grad(), self.model.disable_adapter(), self.autocast():
            reference = token_logprobs(self.model)
        with self.autocast():
            logprobs = token_logprobs(network)
        return self._per_token_loss(logprobs, reference, advantage, mask)

    def _per_token_loss(self, logprobs: torch.Tensor, reference: torch.Tensor, advantage: torch.Tensor,
                        mask: torch.Tensor) -> tuple[torch.Tensor, float]:
        ratio = torch.exp(logprobs - logprobs.detach())
        epsilon = self.spec.clip_epsilon
        policy = -torch.minimum(ratio * advantage, ratio.clamp(1 - epsilon, 1 + epsilon) * advantage)
        delta = reference - logprobs
        kl = torch.exp(delta) - delta - 1
        per_token = policy + self.spec.kl_beta * kl
        return (per_token * mask).sum(), float((kl.detach() * mask).sum())

    def _row_loss_sums(self, rows: list[tuple[list[int], list[int], float]], network: Any) -> tuple[torch.Tensor, float]:
        """`_loss_sums` with every row computing its own prompt."""
        width = max(len(prompt) + len(ids) for prompt, ids, _ in rows)
        keep = max(len(ids) for _, ids, _ in rows) + 1
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        targets = torch.full((len(rows), keep - 1), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), keep - 1))
        for row, (prompt, ids, _) in enumerate(rows):
            # Left-aligned rows padded on the right; the logits kept are the last `keep` positions, so each
            # row's completion is shifted to end where the row's tokens end.
            sequence = prompt + ids
            offset = width - len(sequence)
            input_ids[row, offset:] = torch.tensor(sequence)
            attention[row, offset:] = 1
            targets[row, keep - 1 - len(ids):] = torch.tensor(ids)
            mask[row, keep - 1 - len(ids):] = 1
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        targets, mask = targets.to(self.device), mask.to(self.device)
        advantage = torch.tensor([a for _, _, a in rows], device=self.device).unsqueeze(1)
        inputs = {"input_ids": input_ids, "attention_mask": attention, "position_ids": positions,
                  "use_cache": False, "logits_to_keep": keep}
        with torch.no_grad(), self.model.disable_adapter(), self.autocast():
            reference = _token_logprobs(self.model(**inputs).logits[:, :-1], targets)
        with self.autocast():
            logprobs = _token_logprobs(network(**inputs).logits[:, :-1], targets)
        return self._per_token_loss(logprobs, reference, advantage, mask)


class BaseModelEndpoint:
    """Model graders answered by the job's base model (the policy with its adapter switched off) through the
    trainer's sampler, where the deployment configures no grader endpoint. The reply is not constrained to
    the JSON format (the instruction asks for it); requests run one at a time, on the calling thread."""

    def __init__(self, sampler: Any, tokenizer: Any, base_model: str) -> None:
        self.sampler = sampler
        self.tokenizer = tokenizer
        self.base_model = base_model
        self._lock = threading.Lock()

    def chat(self, model: str, messages: list[dict[str, Any]], *, response_format: dict[str, Any],
             sampling: dict[str, Any]) -> ChatReply:
        if model != self.base_model:
            raise EndpointError(f"the training worker answers grader requests only with {self.base_model!r}, "
                                f"not {model!r} (configure FTAAS_GRADER_MODEL_BASE_URL)", retryable=False)
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        with self._lock:
            drawn = self.sampler.sample([prompt], samples=1, max_new_tokens=int(sampling.get("max_tokens", 256)),
                                        temperature=float(sampling.get("temperature", 0.0)),
                                        seed=int(sampling.get("seed", 0)), use_adapter=False)[0][0]
        ids = drawn.token_ids[:-1] if drawn.stop_token is not None else drawn.token_ids
        return ChatReply(text=self.tokenizer.decode(ids, skip_special_tokens=True), prompt_tokens=len(prompt),
                         completion_tokens=len(drawn.token_ids))


def advantages(rewards: Sequence[float]) -> list[float]:
    """Group-relative advantages: rewards centred on the group's mean and scaled by its standard deviation;
    all zero when the group has fewer than two rewards or they are all equal."""
    if len(rewards) < 2:
        return [0.0] * len(rewards)
    mean = sum(rewards) / len(rewards)
    std = _std(rewards)
    if std < 1e-8:
        return [0.0] * len(rewards)
    return [(r - mean) / (std + ADVANTAGE_EPSILON) for r in rewards]


def _std(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at every position, in float32, without materialising a second vocabulary-wide tensor
    beyond log_softmax's."""
    return torch.gather(F.log_softmax(logits.float(), dim=-1), -1, targets.unsqueeze(-1)).squeeze(-1)


def _sample(text: str, has_tools: bool) -> Sample:
    if not has_tools:
        return Sample(text)
    content, calls = parse_tool_calls(text)
    return Sample(content or "", tuple(calls))
