"""The losses a step minimises and evaluation scores, each as a sum with its count, so that the caller can
divide by a count summed over every process (the mean over the step's trained tokens however the examples
are laid out: packed rows, padded rows, or split across data-parallel processes).

* supervised (SFT): cross-entropy on the assistant tokens (`sft_sums`), from one packed row at the scored
  positions only where the kernels allow (worker.training.kernels), else from padded or bounded rows;
* DPO: -log sigmoid(beta x the policy's margin over the reference's), where the reference is the same
  model with the adapter disabled, so there is no second copy of the weights (`dpo_sums`);
* SPIN (supervised data with self_play): DPO's loss on (the data's answer, the model's own sample) pairs,
  the reference being the model at the round's start, whose log probabilities are computed once per round
  (`self_play_sums`; worker.training.self_play);
* rehearsal's anchor: KL(base || tuned) of the next-token distributions on the base model's own answers to
  general prompts (`anchor_sums`, against `reference_distributions` computed once before training).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from contracts.training.spec import TrainingSpec
from worker.training import kernels
from worker.training.batching import Batch, pack, pad
from worker.training.data import IGNORE, PreferenceExample, SelfPlayPair, TokenizedExample
from worker.training.kernels import Kernels
from worker.training.loss import head_outputs_hidden, linear_cross_entropy

#: (sum of losses, what they count: trained tokens or examples, correct tokens or winning pairs, real tokens)
Sums = tuple[torch.Tensor, int, int, int]


class Objectives:
    """The losses of one job's model. `model` is the peft model (its adapter can be disabled: the DPO
    reference); the network a loss runs through is passed per call (the data-parallel wrapper in a training
    step, the model itself in evaluation)."""

    def __init__(self, spec: TrainingSpec, model: Any, pad_id: int, computing: Kernels, device: torch.device, *,
                 head: torch.nn.Linear | None = None, rehearsal: Sequence[TokenizedExample] = (),
                 references: Sequence[torch.Tensor] = ()) -> None:
        self.spec = spec
        self.model = model
        self.pad_id = pad_id
        self.kernels = computing
        self.device = device
        #: the output layer applied inside the chunked loss (kernels.probe_head), or None: the model's logits
        self.head = head
        self.rehearsal = list(rehearsal)
        self.references = list(references)

    def autocast(self) -> Any:
        return kernels.autocast(self.device, self.kernels.dtype)

    def batch(self, examples: list[TokenizedExample]) -> Batch:
        if self.kernels.packing:
            return pack(examples, self.pad_id, self.kernels.capacity).to(self.device)
        return pad(examples, self.pad_id).to(self.device)

    def sums(self, examples: list[Any], network: Any) -> Sums:
        """The job's own loss over `examples`: DPO's, SPIN's (on its pairs) or the supervised one."""
        if examples and isinstance(examples[0], SelfPlayPair):
            return self.self_play_sums(examples, network)
        return self.dpo_sums(examples, network) if self.spec.method == "dpo" else self.sft_sums(examples, network)

    def sft_sums(self, examples: list[TokenizedExample], network: Any) -> Sums:
        """(sum of token losses, trained tokens, correctly predicted tokens, real tokens processed)."""
        batch = self.batch(examples)
        targets = batch.labels[:, 1:]
        if self.kernels.keeps_positions and batch.input_ids.shape[0] == 1:
            # One packed row: logits only where a token is predicted (a prompt's are never used).
            scored = torch.nonzero(targets[0] != IGNORE).flatten()
            targets = targets[0, scored]
            if self.head is not None:
                with head_outputs_hidden(self.head):
                    hidden = network(**batch.model_inputs(), use_cache=False, logits_to_keep=scored).logits[0]
                loss_sum, correct = linear_cross_entropy(hidden, self.head, targets,
                                                         self.kernels.dtype or torch.float32)
                return loss_sum, len(targets), correct, batch.tokens
            logits = network(**batch.model_inputs(), use_cache=False, logits_to_keep=scored).logits[0]
        else:
            logits = logits_of(network, batch)[:, :-1]
            logits, targets = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)
        trained = targets != IGNORE
        # The loss in fp32 whatever the head computed in; the argmax needs no copy (a cast keeps the order).
        loss_sum = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE, reduction="sum")
        correct = int(((logits.argmax(-1) == targets) & trained).sum())
        return loss_sum, int(trained.sum()), correct, batch.tokens

    def dpo_sums(self, examples: list[PreferenceExample], network: Any) -> Sums:
        """(sum of example losses, examples, examples whose chosen reply wins, real tokens processed)."""
        sequences = [e.chosen for e in examples] + [e.rejected for e in examples]
        policy, tokens = self.sequence_logps(network, sequences)
        with torch.no_grad(), self.model.disable_adapter():
            reference, _ = self.sequence_logps(self.model, sequences)
        n = len(examples)
        margin = (policy[:n] - reference[:n]) - (policy[n:] - reference[n:])
        loss_sum = -F.logsigmoid(self.spec.beta * margin).sum()
        return loss_sum, n, int((margin > 0).sum()), tokens

    def self_play_sums(self, pairs: list[SelfPlayPair], network: Any) -> Sums:
        """SPIN's loss: DPO's, with the model at the round's start as the reference (its log probabilities
        computed when the round's pairs were drawn). Same sums as `dpo_sums`."""
        policy, tokens = self.sequence_logps(network, [p.chosen for p in pairs] + [p.rejected for p in pairs])
        reference = torch.tensor([[p.chosen_reference for p in pairs], [p.rejected_reference for p in pairs]],
                                 device=policy.device)
        n = len(pairs)
        margin = (policy[:n] - reference[0]) - (policy[n:] - reference[1])
        loss_sum = -F.logsigmoid(self.spec.beta * margin).sum()
        return loss_sum, n, int((margin > 0).sum()), tokens

    def sequence_logps(self, network: Any, sequences: list[TokenizedExample]) -> tuple[torch.Tensor, int]:
        """(each sequence's summed log probability of its trained tokens, real tokens processed)."""
        batch = pad(sequences, self.pad_id).to(self.device)
        logits = logits_of(network, batch)[:, :-1].float()
        targets = batch.labels[:, 1:]
        trained = targets != IGNORE
        logps = torch.gather(logits.log_softmax(-1), 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (logps * trained).sum(-1), batch.tokens

    def anchor_sums(self, indices: list[int], network: Any) -> tuple[torch.Tensor, int, int]:
        """Rehearsal: (sum over the answer tokens of KL(base || tuned) of the next-token distributions, answer
        tokens, real tokens processed) for the rehearsal examples at `indices`.

        The whole distribution, not just the base model's greedy token, is held in place: a cross-entropy on
        its own greedy answers pulls only on the top token, which the model already predicts, so it barely
        resists drift (measured: as many general answers lost as without rehearsal; docs/training.md).
        Padded rows (not packed) keep the answer positions in example order, matching the references."""
        examples = [self.rehearsal[i] for i in indices]
        batch = pad(examples, self.pad_id).to(self.device)
        logits = logits_of(network, batch)[:, :-1].float().log_softmax(-1)
        answer = batch.labels[:, 1:] != IGNORE
        reference = torch.cat([self.references[i] for i in indices]).to(self.device, torch.float32)
        divergence = F.kl_div(logits[answer], reference, log_target=True, reduction="sum")
        return divergence, int(answer.sum()), batch.tokens


def logits_of(network: Any, batch: Batch) -> torch.Tensor:
    """The network's logits for the batch's own positions."""
    logits = network(**batch.model_inputs(), use_cache=False).logits
    if logits.shape[1] > batch.input_ids.shape[1]:  # prompt tuning: outputs for the virtual tokens first
        logits = logits[:, -batch.input_ids.shape[1]:]
    return logits


@torch.no_grad()
def reference_distributions(model: Any, rehearsal: Sequence[TokenizedExample], pad_id: int, device: torch.device,
                            dtype: torch.dtype | None) -> list[torch.Tensor]:
    """The base model's next-token log-probabilities at every answer position of each rehearsal example,
    computed once (bf16, [answer tokens, vocabulary] each) with the peft model's adapter disabled."""
    references = []
    with model.disable_adapter():
        model.eval()
        for example in rehearsal:
            batch = pad([example], pad_id).to(device)
            with kernels.autocast(device, dtype):
                logits = logits_of(model, batch)[:, :-1].float().log_softmax(-1)
            references.append(logits[batch.labels[:, 1:] != IGNORE].to(torch.bfloat16).cpu())
        model.train()
    return references
