"""Caption metrics in pure Python (no Java): corpus BLEU-1..4 and CIDEr-D.

BLEU follows Papineni et al. 2002 as the COCO caption toolkit computes it: clipped n-gram
precisions summed over the corpus, geometric mean of 1..N, and a brevity penalty from the
corpus candidate length against the *closest* reference length of each image.

CIDEr-D follows Vedantam et al. 2015 and the coco-caption implementation: TF-IDF n-gram
vectors (n = 1..4; document frequencies over the reference sets of the evaluated images),
candidate counts clipped to the reference counts, a Gaussian length penalty (sigma = 6),
averaged over references and n, times 10.

Both take already-tokenized text (models.text.tokenize).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

Tokens = Sequence[str]


def ngrams(tokens: Tokens, n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(
    candidates: Mapping[str, Tokens], references: Mapping[str, Sequence[Tokens]], *, max_n: int = 4
) -> dict[str, float]:
    """{"BLEU-1": .., ..., "BLEU-4": ..} for one candidate per image against all its references."""
    matched = [0] * max_n
    total = [0] * max_n
    cand_len = ref_len = 0
    for key, cand in candidates.items():
        refs = references[key]
        cand_len += len(cand)
        # closest reference length (shorter wins a tie), as coco-caption does
        ref_len += min((abs(len(r) - len(cand)), len(r)) for r in refs)[1]
        for n in range(1, max_n + 1):
            counts = ngrams(cand, n)
            best: Counter = Counter()
            for r in refs:
                best |= ngrams(r, n)
            matched[n - 1] += sum(min(c, best[g]) for g, c in counts.items())
            total[n - 1] += max(0, len(cand) - n + 1)
    if cand_len == 0:
        return {f"BLEU-{n}": 0.0 for n in range(1, max_n + 1)}
    penalty = 1.0 if cand_len > ref_len else math.exp(1 - ref_len / cand_len)
    scores, log_sum = {}, 0.0
    for n in range(1, max_n + 1):
        precision = matched[n - 1] / total[n - 1] if total[n - 1] else 0.0
        log_sum += math.log(precision) if precision > 0 else float("-inf")
        scores[f"BLEU-{n}"] = penalty * math.exp(log_sum / n) if log_sum > float("-inf") else 0.0
    return scores


def _tfidf(counts: Counter, df: Mapping[tuple, int], num_docs: int) -> dict[tuple, float]:
    return {g: c * math.log(max(1.0, num_docs) / max(1.0, df.get(g, 0.0))) for g, c in counts.items()}


def _norm(vec: Mapping[tuple, float]) -> float:
    return math.sqrt(sum(v * v for v in vec.values()))


def cider_d(
    candidates: Mapping[str, Tokens], references: Mapping[str, Sequence[Tokens]], *, max_n: int = 4, sigma: float = 6.0
) -> float:
    """Corpus CIDEr-D (mean over images), in coco-caption's scale (x10)."""
    keys = list(candidates)
    if not keys:
        return 0.0
    df: list[Counter] = [Counter() for _ in range(max_n)]
    for key in keys:
        for n in range(1, max_n + 1):
            for g in set().union(*(ngrams(r, n) for r in references[key])):
                df[n - 1][g] += 1
    num_docs = len(keys)
    total = 0.0
    for key in keys:
        cand = candidates[key]
        refs = references[key]
        score = 0.0
        for n in range(1, max_n + 1):
            c_counts = ngrams(cand, n)
            c_vec = _tfidf(c_counts, df[n - 1], num_docs)
            per_ref = 0.0
            for r in refs:
                r_counts = ngrams(r, n)
                r_vec = _tfidf(r_counts, df[n - 1], num_docs)
                # CIDEr-D: clip the candidate's tf-idf at the reference's, Gaussian length penalty
                dot = sum(min(c_vec[g], r_vec[g]) * r_vec[g] for g in c_vec if g in r_vec)
                denom = _norm(c_vec) * _norm(r_vec)
                sim = dot / denom if denom else 0.0
                per_ref += sim * math.exp(-((len(cand) - len(r)) ** 2) / (2 * sigma**2))
            score += per_ref / len(refs)
        total += score / max_n * 10.0
    return total / num_docs


def caption_scores(candidates: Mapping[str, Tokens], references: Mapping[str, Sequence[Tokens]]) -> dict[str, float]:
    """BLEU-1..4 and CIDEr-D together."""
    missing = [k for k in candidates if k not in references or not references[k]]
    if missing:
        raise ValueError(f"no reference captions for {missing[:5]}")
    return {**corpus_bleu(candidates, references), "CIDEr-D": cider_d(candidates, references)}
