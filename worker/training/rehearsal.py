"""Rehearsal: keep what the base model knew while it learns a small file.

Fine-tuning a small chat model on a few tens of facts teaches it more than the facts: it gets worse at
everything else (measured on SmolLM2-135M-Instruct: a 16-fact file learned with LoRA lost 7 to 14 of the 30
general-knowledge answers the base model had right, "The capital of Germany is Germany", whatever the
learning rate, batch size, rank or target modules; docs/training.md). Rehearsal adds to every optimizer step
a term that holds the model's next-token distributions on the base model's *own* answers to general prompts
where the base model had them: the KL divergence from the base model (adapter disabled) to the model being
trained, at every answer token. It costs one more forward and backward per step on one short example per
batch item, and the base distributions are computed once at the start. Measured on the same file: 0 to 2 of
30 answers lost, with the facts still learned.

(A cross-entropy on the base model's greedy answers, the "self-synthesized rehearsal" form, was measured
too and lost as many answers as no rehearsal: the model already predicts its own greedy tokens, so that loss
barely pulls until the damage is done. The whole distribution is a much stronger anchor; docs/training.md
has both measurements, made with bench/fact_learning.py.)

The prompts are fixed and generic (how-to, explanations, well-known people and facts). They are disjoint
from the built-in evaluation suites, in particular from `world_knowledge`, which measures forgetting: the
eval never scores a question that was rehearsed. The targets are the base model's, right or wrong, so
rehearsal teaches nothing new; nothing of the user's data is changed or dropped.
"""

from __future__ import annotations

from typing import Any

import torch

from worker.training.data import IGNORE, TokenizedExample

#: Longest base-model answer kept as a rehearsal target (tokens).
MAX_ANSWER_TOKENS = 32

PROMPTS: tuple[str, ...] = (
    "Who discovered penicillin?", "Who invented the telephone?", "Who composed the Moonlight Sonata?",
    "Who was the first person to walk on the Moon?", "Who wrote Pride and Prejudice?",
    "Who painted The Starry Night?", "Who proposed the theory of evolution by natural selection?",
    "Who invented the light bulb?", "What is photosynthesis?", "Why do we have seasons?",
    "What is the speed of light?", "How does a rainbow form?", "What is the largest desert in the world?",
    "What is the smallest prime number?", "What do you call a baby cat?", "How many planets are in the solar system?",
    "Give me a tip for learning a new language.", "How do I boil an egg?", "Write a short greeting for a birthday card.",
    "Suggest a name for a pet goldfish.", "What is a good way to start the morning?",
    "Explain what a noun is.", "What is the opposite of ancient?", "Translate 'thank you' into French.",
    "What is the square root of 81?", "What does a thermometer measure?", "Name a fruit that is yellow.",
    "Which animal is the largest mammal?", "What is the main language spoken in Argentina?",
    "What is the capital of Portugal?", "What do caterpillars turn into?", "Describe the ocean in one sentence.",
)


def rehearsal_examples(model: Any, tokenizer: Any, max_len: int, *, batch: int = 16) -> list[TokenizedExample]:
    """The base model's greedy answers to PROMPTS as trainable examples (call before adding an adapter).

    Each example is the prompt's chat rendering followed by exactly the tokens the model generated, up to and
    including its end-of-turn token (an answer cut at MAX_ANSWER_TOKENS has none, so rehearsal never teaches
    shorter answers); only the generated tokens are labelled. Deterministic for a given model: greedy
    decoding, prompts in a fixed order.
    """
    device = next(model.parameters()).device
    stop = tokenizer.eos_token_id
    side, was_training = tokenizer.padding_side, model.training
    tokenizer.padding_side = "left"
    model.eval()
    examples = []
    try:
        for start in range(0, len(PROMPTS), batch):
            texts = [tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                   add_generation_prompt=True) for prompt in PROMPTS[start:start + batch]]
            encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.inference_mode():
                output = model.generate(**encoded, max_new_tokens=MAX_ANSWER_TOKENS, do_sample=False,
                                        pad_token_id=tokenizer.pad_token_id, eos_token_id=stop)
            width = encoded["input_ids"].shape[1]
            for row in range(len(texts)):
                prompt_ids = encoded["input_ids"][row][encoded["attention_mask"][row].bool()].tolist()
                answer = output[row, width:].tolist()
                if stop in answer:
                    answer = answer[:answer.index(stop) + 1]
                if not answer or answer == [stop]:
                    continue
                ids = (prompt_ids + answer)[:max_len]
                labels = ([IGNORE] * len(prompt_ids) + answer)[:max_len]
                if any(label != IGNORE for label in labels):
                    examples.append(TokenizedExample(ids, labels))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return examples
