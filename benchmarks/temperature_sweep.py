"""The soft mixture's temperature, for choosing on validation: the TF-IDF router's T over a grid,
each T's mixture of every expert against the dense model, scored as ``xelm evaluate`` scores its
``tfidf@all`` (the same masks, every token, the blind posterior for texts in scripts no expert
writes). The models run once; each T's mixture comes from the one table of log-probabilities.

    python benchmarks/temperature_sweep.py --run-dir runs/demo                        # validation
    python benchmarks/temperature_sweep.py --run-dir runs/demo --temperatures 0.05 0.1 0.2
"""

from __future__ import annotations

import argparse

import numpy as np

from routing import XELM
from routing.scoring import every_token_table
from xelm.app.evaluate import (
    PARAGRAPH_MAX_LEN,
    SCORE_MASK_RATIO,
    _blind_posterior,
    _held_out,
    _intervals,
    _nll,
    _per_language,
    _routed_nll,
    _rows_of,
    _tokens_by_lang,
)
from xelm.app.intervals import summarize
from xelm.rundir import RunDir

GRID = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # 0.1: the X-ELM / c-BTM default


def sweep(run_dir, split: str = "validation", temperatures=GRID, progress: bool = True) -> dict[float, dict]:
    """T -> the evaluation's summary of the soft mixture at T against the dense model."""
    run = RunDir(run_dir)
    _, _, tok, _, cluster_cards, own, _, texts, langs, paragraph = _held_out(run, split)
    cluster = [c["name"] for c in cluster_cards]
    xelm = XELM.from_run(run.root, max_len=PARAGRAPH_MAX_LEN, experts=cluster)
    xelm.pool.add("(dense)", run.dense())
    graphdef, states = xelm.pool.stacked(("(dense)", *cluster))
    lp_ExNxK, w_NxK, set_K = every_token_table(graphdef, states, tok, texts, SCORE_MASK_RATIO,
                                               max_len=PARAGRAPH_MAX_LEN, batch_tokens=xelm.batch_tokens,
                                               progress=progress, desc=f"scoring {len(cluster) + 1} models")
    count = w_NxK.sum(1)
    nll_dense = _nll(lp_ExNxK[[0]], w_NxK, set_K, np.ones((len(texts), 1)))
    lp_ExNxK = lp_ExNxK[1:]
    _, posterior = _blind_posterior(xelm, cluster, texts, lp_ExNxK, w_NxK, set_K)
    seen = sorted(lang for lang in _per_language(langs, nll_dense, count) if lang in own)
    rows_of, tokens = _rows_of(langs), _tokens_by_lang(langs, count)
    out = {}
    for t in temperatures:
        xelm.router("tfidf").temperature = t
        _, nll = _routed_nll(xelm, texts, "tfidf", None, None, posterior, lp_ExNxK, w_NxK, set_K)
        out[t] = summarize(_intervals(seen, rows_of, nll, nll_dense, count, paragraph), tokens)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--split", default="validation", choices=["validation", "test"])
    ap.add_argument("--temperatures", type=float, nargs="+", default=list(GRID))
    a = ap.parse_args()
    results = sweep(a.run_dir, a.split, a.temperatures)
    print(f"soft mixture of every expert against the dense model, {a.split} split:")
    print(f"{'T':>8}{'Δ < 0':>9}{'wins':>7}{'losses':>8}   mean Δ [95%]")
    for t, s in results.items():
        lo, hi = s["mean_delta_ci"]
        print(f"{t:>8g}{s['improved_fraction']:>9.1%}{s['significant_wins']:>7}{s['significant_losses']:>8}   "
              f"{s['mean_delta_loss']:+.3f} [{lo:+.3f}, {hi:+.3f}]")


if __name__ == "__main__":
    main()
