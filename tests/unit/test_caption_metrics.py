"""models/caption_metrics.py against hand-computed BLEU and CIDEr-D values."""

from __future__ import annotations

import math

import pytest

from models.caption_metrics import caption_scores, cider_d, corpus_bleu


def toks(text: str) -> list[str]:
    return text.split()


def test_bleu_hand_example():
    scores = corpus_bleu({"x": toks("the cat sat on the mat")}, {"x": [toks("the cat is on the mat")]})
    # clipped precisions 5/6, 3/5, 1/4, 0/3; equal lengths: no brevity penalty
    assert scores["BLEU-1"] == pytest.approx(5 / 6)
    assert scores["BLEU-2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    assert scores["BLEU-3"] == pytest.approx((5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3))
    assert scores["BLEU-4"] == 0.0


def test_bleu_brevity_penalty_and_closest_reference():
    short = corpus_bleu({"x": toks("the cat")}, {"x": [toks("the cat sat on the mat")]})
    assert short["BLEU-1"] == pytest.approx(math.exp(1 - 6 / 2))
    closest = corpus_bleu({"x": toks("the cat")}, {"x": [toks("the cat sat on the mat"), toks("the cat")]})
    assert closest["BLEU-1"] == pytest.approx(1.0)


def test_bleu_perfect_corpus_and_multiple_references():
    refs = {"a": [toks("a red circle to the left"), toks("something else entirely")], "b": [toks("a blue square")]}
    cands = {"a": toks("a red circle to the left"), "b": toks("a blue square")}
    assert corpus_bleu(cands, refs)["BLEU-4"] == pytest.approx(1.0)


def test_cider_d_hand_example():
    refs = {"A": [toks("a b")], "B": [toks("c d")]}
    cands = {"A": toks("a b c"), "B": toks("c d")}
    # A: unigram cosine 2/sqrt(6), bigram 1/sqrt(2), no 3/4-grams in the reference; length penalty exp(-1/72)
    score_a = (2 / math.sqrt(6) + 1 / math.sqrt(2)) * math.exp(-1 / 72) / 4 * 10
    score_b = 2 / 4 * 10  # identical to its reference: unigram and bigram cosines 1
    assert cider_d(cands, refs) == pytest.approx((score_a + score_b) / 2)


def test_cider_d_is_zero_without_overlap_and_n_grams_everyone_shares_carry_no_weight():
    refs = {"A": [toks("a b")], "B": [toks("c d")]}
    assert cider_d({"A": toks("x y"), "B": toks("z w")}, refs) == 0.0
    same = {"A": [toks("a b")], "B": [toks("a b")]}  # every n-gram in every document: idf 0
    assert cider_d({"A": toks("a b"), "B": toks("a b")}, same) == 0.0


def test_caption_scores_needs_references():
    with pytest.raises(ValueError, match="no reference"):
        caption_scores({"A": ["x"]}, {})
    assert set(caption_scores({"A": ["x"]}, {"A": [["x"]]})) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D"}
