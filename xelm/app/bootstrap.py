"""Paired bootstrap intervals for loss differences.

A language's loss is its tokens' mean NLL (total over its test paragraphs / their token count).
Paragraphs are the unit resampled: tokens of one paragraph share context and are not
independent. Both models are scored on the same resample, so the interval is for the
difference itself (paired), not for two losses compared by eye.
"""

from __future__ import annotations

import numpy as np

N_BOOT = 1000
LEVEL = 0.95


def paired_delta(nll_a_N: np.ndarray, nll_b_N: np.ndarray, count_N: np.ndarray, n_boot: int = N_BOOT,
                 seed: int = 0) -> tuple[float, float, float]:
    """(Δ, low, high): Δ = loss(a) − loss(b) over the paragraphs given (summed NLL and tokens per
    paragraph), with a ``LEVEL`` percentile interval from resampling paragraphs."""
    count_N = np.asarray(count_N, np.float64)
    delta = nll_a_N.sum() / count_N.sum() - nll_b_N.sum() / count_N.sum()
    rng = np.random.default_rng(seed)
    idx_BxN = rng.integers(0, len(count_N), (n_boot, len(count_N)))
    n_B = np.maximum(count_N[idx_BxN].sum(1), 1e-9)
    d_B = (nll_a_N[idx_BxN].sum(1) - nll_b_N[idx_BxN].sum(1)) / n_B
    lo, hi = np.quantile(d_B, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(delta), float(lo), float(hi)


def mean_interval(values, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float | None, float | None, float | None]:
    """(mean, low, high) of ``values`` with a percentile interval from resampling them (here:
    languages, so the interval says how much the mean depends on which languages were tested)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
    if not len(x):
        return None, None, None
    means = x[np.random.default_rng(seed).integers(0, len(x), (n_boot, len(x)))].mean(1)
    lo, hi = np.quantile(means, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(x.mean()), float(lo), float(hi)


def summarize(deltas: dict[str, tuple[float, float, float]], tokens: dict[str, int], seed: int = 0) -> dict:
    """Counts and mean of per-language (Δ, low, high): negative Δ = X-ELM better."""
    if not deltas:
        return {"languages": 0, "improved_fraction": None, "significant_wins": 0, "significant_losses": 0,
                "mean_delta_loss": None, "mean_delta_ci": None, "scored_tokens_median": None}
    d = np.array([v[0] for v in deltas.values()])
    mean, lo, hi = mean_interval(d, seed=seed)
    return {"languages": len(deltas), "improved_fraction": float(np.mean(d < 0)),
            "significant_wins": sum(v[2] < 0 for v in deltas.values()),
            "significant_losses": sum(v[1] > 0 for v in deltas.values()),
            "mean_delta_loss": mean, "mean_delta_ci": [lo, hi],
            "scored_tokens_median": float(np.median([tokens[lang] for lang in deltas]))}
