"""Intervals for loss differences: per language over its paragraphs, and over languages.

A language's loss is its tokens' mean NLL (total over its paragraphs / their token count), so
its difference Δ = Σd / Σc (d: a paragraph's summed NLL difference, c: its tokens) is a ratio
estimator over paragraphs, the unit: tokens of one paragraph share context and are not
independent. Both models are scored on the same tokens, so the interval is for the difference
itself (paired), not for two losses compared by eye.

Why not a percentile bootstrap over paragraphs: most languages have five to ten held-out
paragraphs, and a percentile bootstrap of so few units is too narrow (on null data, 15% of
five-paragraph languages come out "significant" at a nominal 5%; 25% at three). The ratio
estimator's linearised standard error with a Student-t quantile on n − 1 degrees of freedom keeps
the nominal rate from three paragraphs up (``tests/test_evaluation.py`` checks it). One paragraph
gives no interval (None), and so no significant result.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

N_BOOT = 1000
LEVEL = 0.95


def paired_delta(nll_a_N: np.ndarray, nll_b_N: np.ndarray, count_N: np.ndarray
                 ) -> tuple[float, float | None, float | None]:
    """(Δ, low, high): Δ = loss(a) − loss(b) over the paragraphs given (summed NLL and tokens per
    paragraph), with a ``LEVEL`` interval from the ratio estimator's standard error; (Δ, None,
    None) for a single paragraph."""
    count_N = np.asarray(count_N, np.float64)
    d_N = np.asarray(nll_a_N, np.float64) - np.asarray(nll_b_N, np.float64)
    n, total = len(count_N), count_N.sum()
    delta = float(d_N.sum() / total)
    if n < 2:
        return delta, None, None
    residual_N = d_N - delta * count_N
    se = np.sqrt(n / (n - 1) * np.sum(residual_N ** 2)) / total
    half = float(stats.t.ppf((1 + LEVEL) / 2, n - 1) * se)
    return delta, delta - half, delta + half


def significant(low: float | None, high: float | None) -> int:
    """+1 if the interval lies above zero (X-ELM significantly worse), −1 below, 0 otherwise."""
    if low is None or high is None:
        return 0
    return 1 if low > 0 else -1 if high < 0 else 0


def mean_interval(values, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float | None, float | None, float | None]:
    """(mean, low, high) of ``values`` with a percentile interval from resampling them (here:
    hundreds of languages, so the interval says how much the mean depends on which languages
    were tested)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
    if not len(x):
        return None, None, None
    means = x[np.random.default_rng(seed).integers(0, len(x), (n_boot, len(x)))].mean(1)
    lo, hi = np.quantile(means, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(x.mean()), float(lo), float(hi)


def summarize(deltas: dict[str, tuple[float, float | None, float | None]], tokens: dict[str, int],
              seed: int = 0) -> dict:
    """Counts and mean of per-language (Δ, low, high): negative Δ = X-ELM better."""
    if not deltas:
        return {"languages": 0, "improved_fraction": None, "significant_wins": 0, "significant_losses": 0,
                "mean_delta_loss": None, "mean_delta_ci": None, "scored_tokens_median": None}
    d = np.array([v[0] for v in deltas.values()])
    mean, lo, hi = mean_interval(d, seed=seed)
    calls = [significant(v[1], v[2]) for v in deltas.values()]
    return {"languages": len(deltas), "improved_fraction": float(np.mean(d < 0)),
            "significant_wins": calls.count(-1), "significant_losses": calls.count(1),
            "mean_delta_loss": mean, "mean_delta_ci": [lo, hi],
            "scored_tokens_median": float(np.median([tokens[lang] for lang in deltas]))}
