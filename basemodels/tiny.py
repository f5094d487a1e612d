"""The offline demo base model `ftaas-tiny`: built deterministically on first use, never downloaded.

A small Llama-architecture causal LM (random initialisation from a fixed seed) with a byte-level BPE
tokenizer trained on a synthetic corpus generated here from a fixed seed, and a ChatML-style chat template.
Building it twice, on any machine with the same torch and tokenizers versions, gives byte-identical
files. It knows nothing; it exists so that a fresh install can run the whole pipeline (upload, train,
serve, evaluate) with no network access, and so that tests exercise real models.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

from basemodels.cache import RECIPE_FILE, build_once
from contracts.settings import DEMO_BASE_MODEL_SOURCE as BUILTIN_SOURCE

__all__ = ["BUILTIN_SOURCE", "CHAT_TEMPLATE", "RECIPE_VERSION", "build", "ensure_built"]

#: Bump when anything below changes the built files; old builds stay in their own directory.
RECIPE_VERSION = "tiny-chat-v1"
SEED = 20261126

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] }}<|im_end|>{% endgeneration %}"
    "{% else %}{{ message['content'] }}<|im_end|>{% endif %}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|im_start|>", "<|im_end|>"]

_WORDS = """
the a an of to and in is was for on that with as by at from it his her their this be are were which or
have has had not but what all when we there can who been more if will would about so out up one into them
some could time these two may then do first any my now such like our over man me even most made after also
did many before must through back years where much your way well down should because each just those
people how too little state good very make world still own see men work long get here between both life
being under never day same another know while last might us great old year off come since against go came
right used take three city town river lake mountain island forest street house school company team
country language music book film song game science history art teacher doctor engineer writer painter
farmer pilot chef nurse lawyer student scientist born lives works studies plays speaks likes owns built
wrote founded married moved visited named called favourite colour food animal sport number date month
january february march april may june july august september october november december monday tuesday
wednesday thursday friday saturday sunday red blue green yellow purple orange black white brown grey
cat dog horse bird fish lion tiger bear wolf fox owl apple bread cheese rice soup cake tea coffee water
football tennis chess swimming running cycling piano violin guitar drums question answer yes no true
false correct wrong please thank hello goodbye who what where when why how which whose user assistant
system function value return import class method version library package module update renamed
deprecated replaced new older newer before after during event happened meeting festival election
""".split()
_SYLLABLES = ["ka", "lo", "mi", "ra", "ten", "vo", "zel", "ba", "dor", "fi", "gan", "hu", "jo", "ke", "lin",
              "mar", "nos", "pe", "qui", "ro", "sa", "tu", "vel", "wen", "xa", "yo", "zu", "ar", "el", "is"]


def _corpus(seed: int) -> Iterator[str]:
    rng = random.Random(seed)
    for _ in range(6000):
        kind = rng.random()
        if kind < 0.2:
            name = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
            yield f"{name} {rng.choice(['was born in', 'lives in', 'works as a', 'likes'])} {rng.choice(_WORDS)}."
        elif kind < 0.3:
            yield f"In {rng.randint(1900, 2030)} the {rng.choice(_WORDS)} had {rng.randint(0, 9999)} {rng.choice(_WORDS)}."
        elif kind < 0.35:
            yield f"{rng.choice(_WORDS)}_{rng.choice(_WORDS)}({rng.choice(_WORDS)}={rng.randint(0, 99)})"
        else:
            words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
            yield " ".join(words).capitalize() + rng.choice([".", "?", "!", ","])


def build(destination: Path) -> None:
    """Write the tokenizer and model files into `destination` (which must not exist)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(SEED), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|bos|>", eos_token="<|im_end|>", pad_token="<|pad|>",
        model_max_length=1024,
    )
    tokenizer.chat_template = CHAT_TEMPLATE

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    destination.mkdir(parents=True)
    model.save_pretrained(destination, safe_serialization=True)
    tokenizer.save_pretrained(destination)
    (destination / RECIPE_FILE).write_text(json.dumps({"recipe": RECIPE_VERSION, "seed": SEED}))


def ensure_built(cache_dir: Path) -> Path:
    """The directory of the built demo model, building it once (safe across concurrent processes)."""
    return build_once(cache_dir, RECIPE_VERSION, build)
