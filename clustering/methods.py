"""Clustering methods: average-linkage agglomerative, its size-balanced variant, balanced k-means.

All take and return plain numpy arrays; labels are ints 0..k-1. "Balanced" means each
cluster's share of ``sizes`` (training tokens per language, or 1 each) lies within
``tolerance`` of total/k wherever single items allow it, so that every expert gets a
comparable amount of training data (c-BTM's balanced k-means, generalised to weights).
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import cut_tree, linkage
from scipy.spatial.distance import squareform

TOLERANCE = 0.1


def average_linkage(d_NxN: np.ndarray) -> np.ndarray:
    """scipy linkage matrix of the distances (symmetrised, zero diagonal)."""
    d = (np.asarray(d_NxN, dtype=np.float64) + np.asarray(d_NxN, dtype=np.float64).T) / 2
    np.fill_diagonal(d, 0.0)
    return linkage(squareform(np.clip(d, 0, None), checks=False), method="average")


def agglomerative(d_NxN: np.ndarray, k: int) -> np.ndarray:
    """Average-linkage clusters, the tree cut into exactly k (even where distances tie)."""
    if k >= len(d_NxN):
        return np.arange(len(d_NxN))
    return _relabel(cut_tree(average_linkage(d_NxN), n_clusters=k)[:, 0])


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Labels 0..k-1 in order of first appearance (deterministic names later)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse]


def balanced_assignment(cost_NxK: np.ndarray, sizes_N: np.ndarray, tolerance: float = TOLERANCE) -> np.ndarray:
    """Cheapest assignment under a size cap, then clusters below the floor take their cheapest items.

    Greedy: the items with most to lose (largest gap between best and second-best cluster) choose
    first; a cluster accepts an item while its load stays under total/k*(1+tolerance) (an empty
    cluster accepts anything, so one huge language simply gets its own cluster).
    """
    cost = np.asarray(cost_NxK, dtype=np.float64)
    sizes = np.asarray(sizes_N, dtype=np.float64)
    n, k = cost.shape
    target = sizes.sum() / k
    cap, floor = target * (1 + tolerance), target * (1 - tolerance)
    ranked = np.sort(cost, axis=1)
    regret = ranked[:, 1] - ranked[:, 0] if k > 1 else np.zeros(n)
    labels = np.full(n, -1)
    loads = np.zeros(k)
    for i in np.lexsort((np.arange(n), -regret)):
        for c in np.argsort(cost[i], kind="stable"):
            if loads[c] == 0 or loads[c] + sizes[i] <= cap + 1e-9:
                break
        else:
            c = int(np.argmin(loads))
        labels[i], loads[c] = c, loads[c] + sizes[i]
    for _ in range(n):  # fill clusters under the floor with the items that cost least to move
        c = int(np.argmin(loads))
        if loads[c] >= floor - 1e-9:
            break
        movable = ((labels != c) & (loads[labels] - sizes >= floor - 1e-9)
                   & (loads[c] + sizes <= cap + 1e-9))
        if not movable.any():
            break
        i = int(np.argmin(np.where(movable, cost[:, c] - cost[np.arange(n), labels], np.inf)))
        loads[labels[i]] -= sizes[i]
        labels[i], loads[c] = c, loads[c] + sizes[i]
    return labels


def capped_agglomerative(d_NxN: np.ndarray, k: int, sizes_N: np.ndarray, cap: float) -> np.ndarray:
    """Average linkage that refuses merges above ``cap`` (while any merge fits) until k clusters remain."""
    d = np.asarray(d_NxN, dtype=np.float64)
    n = len(d)
    between = d.copy()  # mean distance between clusters (Lance-Williams update for average linkage)
    np.fill_diagonal(between, np.inf)
    count, load = np.ones(n), np.asarray(sizes_N, dtype=np.float64).copy()
    alive = np.ones(n, dtype=bool)
    owner = np.arange(n)
    for _ in range(n - k):
        pair_load = load[:, None] + load[None, :]
        usable = alive[:, None] & alive[None, :] & np.isfinite(between)
        fits = usable & (pair_load <= cap + 1e-9)
        if fits.any():
            a, b = np.unravel_index(np.argmin(np.where(fits, between, np.inf)), between.shape)
        else:  # nothing fits: merge the lightest pair, so the largest cluster grows least
            a, b = np.unravel_index(np.argmin(np.where(usable, pair_load + between * 1e-9, np.inf)), between.shape)
        merged = (count[a] * between[a] + count[b] * between[b]) / (count[a] + count[b])
        between[a], between[:, a] = merged, merged
        between[a, a] = np.inf
        between[b], between[:, b] = np.inf, np.inf
        count[a], load[a], alive[b] = count[a] + count[b], load[a] + load[b], False
        owner[owner == b] = a
    return _relabel(owner)


def balanced_agglomerative(d_NxN: np.ndarray, k: int, sizes_N: np.ndarray | None = None,
                           tolerance: float = TOLERANCE, max_iter: int = 20) -> np.ndarray:
    """Size-capped average linkage, then languages move to the cluster of least mean distance.

    Merges are refused above total/k*(1+tolerance); then each language may move to the cluster
    it is closest to on average (average linkage's own criterion) as long as sizes stay within
    the cap and floor, until nothing moves.
    """
    d = np.asarray(d_NxN, dtype=np.float64)
    n = len(d)
    sizes = np.ones(n) if sizes_N is None else np.asarray(sizes_N, dtype=np.float64)
    if k >= n:
        return np.arange(n)
    labels = capped_agglomerative(d, k, sizes, sizes.sum() / k * (1 + tolerance))
    for _ in range(max_iter):
        onehot = np.eye(k)[labels]
        others = onehot.sum(0)[None, :] - onehot  # members other than the item itself
        alone_or_empty = np.where(onehot > 0, 0.0, 1.0)  # stay alone: free; join an empty cluster: worst
        cost = np.divide(d @ onehot, others, out=alone_or_empty, where=others > 0)
        new = balanced_assignment(cost, sizes, tolerance)
        if np.array_equal(new, labels):
            break
        labels = new
    return _relabel(labels)


def kmeans(x_NxD: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Plain k-means (sklearn, 10 restarts); returns labels and centroids."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x_NxD)
    return km.labels_, km.cluster_centers_


def balanced_kmeans(x_NxD: np.ndarray, k: int, sizes_N: np.ndarray | None = None, seed: int = 0,
                    tolerance: float = TOLERANCE, max_iter: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """k-means whose assignment step is :func:`balanced_assignment` (c-BTM); labels and centroids."""
    from sklearn.cluster import kmeans_plusplus

    x = np.asarray(x_NxD, dtype=np.float64)
    sizes = np.ones(len(x)) if sizes_N is None else np.asarray(sizes_N, dtype=np.float64)
    centroids, _ = kmeans_plusplus(x, k, random_state=seed)
    labels = None
    for _ in range(max_iter):
        cost = ((x[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)
        new = balanced_assignment(cost, sizes, tolerance)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        centroids = np.stack([x[labels == c].mean(0) if np.any(labels == c) else centroids[c] for c in range(k)])
    return labels, centroids


def purity(labels, truth) -> float:
    """Share of items whose cluster's most common true class is their own."""
    labels, truth = np.asarray(labels), np.asarray(truth)
    hits = sum(np.unique(truth[labels == c], return_counts=True)[1].max() for c in np.unique(labels))
    return float(hits / len(labels))
