"""Language-balanced sampling with a temperature, shared by the tokenizer and training.

p_l ∝ n_l^τ: τ = 1 follows the data, τ -> 0 is uniform over languages (the XLM-R / mmBERT
convention, where annealing τ 0.7 -> 0.5 -> 0.3 moves towards uniform). p_l is a share of the
text (characters here, tokens in training: see ``TokenizedCorpus.document_draws``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from xelm.errors import XelmError


def language_probabilities(sizes: Mapping[str, float], temperature: float) -> dict[str, float]:
    """Sampling probability of each language from its size (rows, tokens or characters)."""
    if not 0 < temperature <= 1:
        raise XelmError(f"sampling temperature {temperature} is out of range: use 0 < τ <= 1")
    langs = sorted(sizes)
    n = np.array([float(sizes[lang]) for lang in langs])
    if not len(n) or (n <= 0).all():
        raise XelmError("no language has any text to sample from")
    w = np.where(n > 0, np.power(np.maximum(n, 1e-12), temperature), 0.0)
    return dict(zip(langs, (w / w.sum()).tolist()))


def sample_texts(texts_by_lang: Mapping[str, list[str]], temperature: float, n_chars: int,
                 seed: int = 0) -> list[str]:
    """About ``n_chars`` characters of text, each language's share set by its probability.

    A language's texts are taken in a seeded random order and repeated when its share is
    larger than its text (small languages are up-sampled, large ones down-sampled).
    """
    sizes = {lang: sum(map(len, ts)) for lang, ts in texts_by_lang.items()}
    probs = language_probabilities(sizes, temperature)
    rng = np.random.default_rng(seed)
    out: list[str] = []
    for lang, p in probs.items():
        texts, budget = texts_by_lang[lang], p * n_chars
        if not sizes[lang]:
            continue
        while budget > 0:
            for i in rng.permutation(len(texts)):
                out.append(texts[i])
                budget -= len(texts[i])
                if budget <= 0:
                    break
    rng.shuffle(out)
    return out
