"""text_similarity's metrics, checked against values worked out by hand from each metric's definition (so a
wrong tokenizer, scale or library call shows), and the cosine metric's embedding model from its package."""

from __future__ import annotations

import math

import pytest

from graders.similarity import similarity

REFERENCE = "a quick brown fox jumps over the dog"            # 8 tokens, none repeated
PREFIX = "a quick brown fox jumps over"                       # its first 6


def test_fuzzy_match_is_the_normalised_indel_similarity() -> None:
    # kitten / sitting: longest common subsequence "ittn" (4), 2*4 / (6+7)
    assert similarity("fuzzy_match", "kitten", "sitting") == pytest.approx(8 / 13)
    assert similarity("fuzzy_match", "same", "same") == 1.0


def test_bleu_of_a_prefix_is_its_brevity_penalty() -> None:
    # every n-gram precision is 1, so BLEU = BP = exp(1 - r/c) with r = 8, c = 6
    assert similarity("bleu", PREFIX, REFERENCE) == pytest.approx(math.exp(1 - 8 / 6), abs=1e-4)
    assert similarity("bleu", REFERENCE, REFERENCE) == pytest.approx(1.0)


def test_gleu_is_the_smaller_of_ngram_precision_and_recall() -> None:
    # n-grams 1-4: the prefix has 6+5+4+3 = 18, all matched; the reference has 8+7+6+5 = 26
    assert similarity("gleu", PREFIX, REFERENCE) == pytest.approx(18 / 26)


def test_meteor_with_exact_matches_and_one_chunk() -> None:
    # m = 6, P = 1, R = 6/8; Fmean = PR / (0.9P + 0.1R); penalty 0.5 * (1 chunk / 6 matches)^3
    precision, recall = 1.0, 6 / 8
    fmean = precision * recall / (0.9 * precision + 0.1 * recall)
    expected = fmean * (1 - 0.5 * (1 / 6) ** 3)
    assert similarity("meteor", PREFIX.upper(), REFERENCE) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("metric, expected", [
    # unigrams: P = 6/6, R = 6/8 -> F = 2PR/(P+R); bigrams: 5/5 and 5/7; trigrams 4/4 and 4/6
    ("rouge_1", 2 * 1 * 0.75 / 1.75), ("rouge_2", 2 * (5 / 7) / (1 + 5 / 7)), ("rouge_3", 2 * (4 / 6) / (1 + 4 / 6)),
    ("rouge_4", 2 * (3 / 5) / (1 + 3 / 5)), ("rouge_5", 2 * (2 / 4) / (1 + 2 / 4)),
    ("rouge_l", 2 * 1 * 0.75 / 1.75),  # LCS = 6
])
def test_rouge_f_measures(metric: str, expected: float) -> None:
    assert similarity(metric, PREFIX, REFERENCE) == pytest.approx(expected)


def test_empty_text_scores_zero_and_identical_text_one() -> None:
    for metric in ("fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_l"):
        assert similarity(metric, "", REFERENCE) == 0.0


def test_cosine_ranks_a_paraphrase_above_an_unrelated_sentence() -> None:
    same = similarity("cosine", "A cat sat on the mat.", "A cat sat on the mat.")
    paraphrase = similarity("cosine", "A cat is sitting on the mat.", "There is a cat on the rug.")
    unrelated = similarity("cosine", "A cat is sitting on the mat.", "Quarterly revenue rose by four percent.")
    assert same == pytest.approx(1.0, abs=1e-5)
    assert paraphrase > 0.5 > unrelated >= 0.0
