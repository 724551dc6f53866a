"""The model's own language geometry ("psychotypology"): distances between per-language embeddings.

Input: one vector per language (e.g. the base encoder's mean-pooled representation of held-out
text). Mean-pooled encoder states share a large common direction, which makes every cosine
similarity near 1; we subtract the mean over languages first so that distances show what
differs between languages.
"""

from __future__ import annotations

import numpy as np

from clustering.methods import agglomerative, balanced_agglomerative
from xelm.errors import XelmError


def embedding_distances(embeddings: dict[str, np.ndarray], center: bool = True) -> tuple[list[str], np.ndarray]:
    """Languages (sorted) and their [n, n] cosine distances (in [0, 2], 0 on the diagonal)."""
    if not embeddings:
        raise XelmError("no language embeddings given")
    languages = sorted(embeddings)
    shapes = {np.shape(embeddings[lang]) for lang in languages}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise XelmError(f"language embeddings must be 1-D vectors of one size, got shapes {sorted(shapes)}")
    x_NxD = np.stack([np.asarray(embeddings[lang], dtype=np.float64) for lang in languages])
    if not np.all(np.isfinite(x_NxD)):
        bad = [lang for lang, row in zip(languages, x_NxD) if not np.all(np.isfinite(row))]
        raise XelmError(f"language embeddings hold NaN or inf for {', '.join(bad)}")
    if center and len(languages) > 2:
        x_NxD = x_NxD - x_NxD.mean(0, keepdims=True)
    norm = np.linalg.norm(x_NxD, axis=1, keepdims=True)
    unit = np.divide(x_NxD, norm, out=np.zeros_like(x_NxD), where=norm > 0)
    d = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    np.fill_diagonal(d, 0.0)
    return languages, d


def geometry_clusters(embeddings: dict[str, np.ndarray], k: int, sizes: dict[str, float] | None = None,
                      balanced: bool = False) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Languages, distances and labels: the typology method's clustering on the model's distances."""
    languages, d = embedding_distances(embeddings)
    if balanced:
        weights = None if sizes is None else np.array([sizes[lang] for lang in languages], dtype=np.float64)
        return languages, d, balanced_agglomerative(d, k, weights)
    return languages, d, agglomerative(d, k)


def model_geometry(embeddings: dict[str, np.ndarray], k: int, typology_d: np.ndarray,
                   sizes: dict[str, float] | None = None, balanced: bool = False, top: int = 10) -> dict:
    """Cluster by the model's distances and compare with typology (``typology_d`` in sorted-code order)."""
    languages, d, labels = geometry_clusters(embeddings, k, sizes, balanced)
    agreement = compare_with_typology(languages, d, labels, typology_d, agglomerative(typology_d, k), top)
    return {"languages": languages, "distances": d, "labels": labels, **agreement}


def compare_with_typology(languages: list[str], model_d: np.ndarray, model_labels, typology_d: np.ndarray,
                          typology_labels, top: int = 10) -> dict:
    """Adjusted Rand index of the two clusterings, and the pairs the model puts closest that typology does not.

    A pair's "surprise" is its rank percentile among typology distances minus that among model
    distances; we list the most surprising pairs among the model's closest tenth.
    """
    from sklearn.metrics import adjusted_rand_score

    n = len(languages)
    out = {"adjusted_rand_index": float(adjusted_rand_score(typology_labels, model_labels)),
           "close_in_model_not_typology": []}
    if n < 3:
        return out
    i, j = np.triu_indices(n, 1)
    model_pct = _percentiles(model_d[i, j])
    typology_pct = _percentiles(typology_d[i, j])
    surprise = typology_pct - model_pct
    candidates = np.flatnonzero((model_pct <= 0.1) & (surprise > 0.25))
    for p in candidates[np.lexsort((candidates, -surprise[candidates]))][:top]:
        out["close_in_model_not_typology"].append({
            "languages": [languages[i[p]], languages[j[p]]],
            "model_distance": round(float(model_d[i[p], j[p]]), 4),
            "typology_distance": round(float(typology_d[i[p], j[p]]), 4)})
    return out


def _percentiles(values: np.ndarray) -> np.ndarray:
    """Rank of each value in [0, 1] (ties share their mean rank)."""
    from scipy.stats import rankdata

    return (rankdata(values) - 1) / max(len(values) - 1, 1)
