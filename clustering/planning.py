"""The cluster plan: which languages share an expert, by typology, TF-IDF or the model's geometry.

``plan(...)`` returns the JSON-ready plan; ``make_plan(...)`` also keeps the distances and the
fitted TF-IDF space for plots and the router; ``write_plan`` writes the plan, its plots and
the TF-IDF space side by side.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clustering import uriel
from clustering.fallbacks import resolve_uriel
from clustering.geometry import compare_with_typology, geometry_clusters
from clustering.methods import agglomerative, balanced_agglomerative
from clustering.naming import cluster_names
from clustering.tfidf import TfidfSpace, fit_clusters
from clustering.typology import parse_features, typology_distances
from xelm.errors import XelmError
from xelm.files import write_json
from xelm.languages import check_language

METHODS = ("typology", "tfidf", "model")
DISTANCES = {
    "typology": "weighted mean of URIEL feature-set distances (see weights)",
    "tfidf": "cosine distance of character n-gram TF-IDF after truncated SVD",
    "model": "cosine distance of mean-centred per-language encoder embeddings",
}


@dataclass
class PlanResult:
    plan: dict  # what plan() returns and write_plan() saves
    languages: list[str]  # row order of distances and labels
    distances: np.ndarray  # [n, n] the method's distances
    labels: np.ndarray  # [n] index into names
    names: list[str]
    tfidf: TfidfSpace | None = None  # the TF-IDF method's fitted space, centroids in names' order
    proxy: dict[str, str] = field(default_factory=dict)  # URIEL code each language was placed by


def plan(languages: list[str], method: str = "typology", k: int = 8, texts_by_lang=None, sizes=None,
         embeddings=None, balanced: bool = False, seed: int = 0, **options) -> dict:
    """``{"method", "k", "clusters": {name: [iso, ...]}, "fallbacks": {iso: reason}, ...}``."""
    return make_plan(languages, method, k, texts_by_lang, sizes, embeddings, balanced, seed, **options).plan


def make_plan(languages: list[str], method: str = "typology", k: int = 8,
              texts_by_lang: dict[str, list[str]] | None = None, sizes: dict[str, float] | None = None,
              embeddings: dict[str, np.ndarray] | None = None, balanced: bool = False, seed: int = 0,
              features: str | dict | None = None, scripts: dict[str, str] | None = None) -> PlanResult:
    """``features``: the typology method's feature-set weights (``parse_features``); ``scripts``:
    each language's main script, to keep scripts apart (a cluster mixes scripts only when k is
    smaller than the number of scripts; the plan lists such clusters)."""
    languages = sorted(_check_languages(languages))  # one order for rows, labels and weights
    weights_by_set = parse_features(features)
    if scripts is not None and method != "typology":
        raise XelmError(f"--by-script keeps scripts apart in typology plans; --method {method} groups by text, "
                        "which separates scripts by itself")
    if scripts is not None:
        missing = [lang for lang in languages if not scripts.get(lang)]
        if missing:
            raise XelmError(f"no main script known for {', '.join(missing[:10])}: --by-script needs each "
                            "language's text (give --corpus)")
    if method not in METHODS:
        raise XelmError(f"unknown clustering method {method!r}: choose one of {', '.join(METHODS)}")
    _check_k(k, len(languages))
    weights = None if sizes is None else _check_sizes(sizes, languages)
    texts_by_lang = {lang: _as_list(t) for lang, t in (texts_by_lang or {}).items()}
    proxy, fallbacks, unresolved = resolve_uriel(languages, texts_by_lang)
    space = None
    if method == "typology":
        if unresolved:
            raise XelmError(f"URIEL has no vectors for {', '.join(unresolved)}: give their texts (e.g. "
                            "--corpus) so each is placed by its nearest language by TF-IDF, or leave them out")
        d = typology_distances([proxy[lang] for lang in languages], weights_by_set)
        d_apart = _keep_scripts_apart(d, languages, scripts)
        labels = balanced_agglomerative(d_apart, k, weights) if balanced else agglomerative(d_apart, k)
    elif method == "tfidf":
        missing = [lang for lang in languages if not any(t.strip() for t in texts_by_lang.get(lang, []))]
        if missing:
            raise XelmError(f"--method tfidf needs texts for every language; none for {', '.join(missing[:10])}"
                            f"{' ...' if len(missing) > 10 else ''} (give --corpus)")
        space, labels, x_NxD = fit_clusters(["\n".join(texts_by_lang[lang]) for lang in languages], k,
                                            weights, balanced, seed)
        d = np.clip(1.0 - x_NxD @ x_NxD.T, 0.0, 2.0)
        np.fill_diagonal(d, 0.0)
    else:
        d, labels, agreement = _model_clusters(languages, k, embeddings, weights, balanced, proxy)

    order, names = _name_clusters(languages, labels, weights, proxy)
    rank = {c: i for i, c in enumerate(order)}
    labels = np.array([rank[c] for c in labels])  # cluster index in name order
    if space is not None:
        space.centroids_KxD = space.centroids_KxD[order]
        space.names = names
    share = weights if weights is not None else np.ones(len(languages))
    result = {
        "method": method,
        "k": k,
        "balanced": balanced,
        "languages": len(languages),
        "clusters": {name: sorted(lang for lang, c in zip(languages, labels) if c == i)
                     for i, name in enumerate(names)},
        "fallbacks": fallbacks,
        "shares": {name: round(float(share[labels == i].sum() / share.sum()), 4) for i, name in enumerate(names)},
        "shares_of": "sizes" if weights is not None else "languages",
        "distance": DISTANCES[method],
        "seed": seed,
    }
    if method == "typology":
        result["weights"] = weights_by_set
    if scripts is not None:
        by_cluster = {name: sorted({scripts[lang] for lang in members}) for name, members in result["clusters"].items()}
        result["by_script"] = True
        result["scripts"] = by_cluster
        result["mixed_scripts"] = sorted(name for name, s in by_cluster.items() if len(s) > 1)
    if method == "model":
        result["agreement_with_typology"] = agreement
    return PlanResult(result, languages, d, labels, names, space, proxy)


def _keep_scripts_apart(d: np.ndarray, languages: list[str], scripts: dict[str, str] | None) -> np.ndarray:
    """Distances with languages of different main scripts pushed beyond any same-script pair
    (every distance is at most 1): average linkage merges across scripts only when it must."""
    if scripts is None:
        return d
    s = np.array([scripts[lang] for lang in languages])
    return d + 2.0 * (s[:, None] != s[None, :])


def _model_clusters(languages, k, embeddings, weights, balanced, proxy):
    """The model's clusters, and their agreement with typology over the languages URIEL can place."""
    if not embeddings:
        raise XelmError("--method model needs per-language embeddings from the base encoder")
    missing = [lang for lang in languages if lang not in embeddings]
    if missing:
        raise XelmError(f"no model embedding for {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
    sizes = None if weights is None else dict(zip(languages, weights))
    _, d, labels = geometry_clusters({lang: embeddings[lang] for lang in languages}, k, sizes, balanced)
    known = [i for i, lang in enumerate(languages) if lang in proxy]
    agreement = {"languages_compared": len(known)}
    if len(known) > 1:
        typology_d = typology_distances([proxy[languages[i]] for i in known])
        typology_labels = agglomerative(typology_d, min(k, len(known)))
        agreement.update(compare_with_typology([languages[i] for i in known], d[np.ix_(known, known)],
                                               labels[known], typology_d, typology_labels))
    return d, labels, agreement


def _name_clusters(languages, labels, weights, proxy) -> tuple[np.ndarray, list[str]]:
    """Clusters ordered by share (largest first, then first member), named by dominant family."""
    share = weights if weights is not None else np.ones(len(languages))
    clusters = sorted(np.unique(labels), key=lambda c: (-share[labels == c].sum(),
                                                        min(lang for lang, lab in zip(languages, labels) if lab == c)))
    groups = [sorted(proxy.get(lang, lang) for lang, lab in zip(languages, labels) if lab == c) for c in clusters]
    return np.array(clusters), cluster_names(groups)


def _as_list(texts) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts)


def _check_languages(languages) -> list[str]:
    if isinstance(languages, str):
        languages = [c.strip() for c in languages.split(",") if c.strip()]
    languages = list(languages or [])
    if not languages:
        raise XelmError("no languages given: give ISO 639-3 codes, e.g. --languages fra,spa,rus")
    seen = set()
    for lang in languages:
        if not (isinstance(lang, str) and uriel.has_uriel(lang)):
            check_language(lang, "the languages to cluster")
        if lang in seen:
            raise XelmError(f"language {lang!r} appears twice in the languages to cluster")
        seen.add(lang)
    return languages


def _check_k(k, n: int) -> None:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise XelmError(f"k={k!r} must be a whole number of clusters")
    if k < 1:
        raise XelmError(f"k={k} must be at least 1")
    if k > n:
        raise XelmError(f"k={k} is more than the {n} languages given: use k <= {n}")


def _check_sizes(sizes: dict[str, float], languages: list[str]) -> np.ndarray:
    missing = [lang for lang in languages if lang not in sizes]
    if missing:
        raise XelmError(f"no size for {', '.join(missing[:10])}: sizes must cover every language")
    bad = [lang for lang in languages if not (isinstance(sizes[lang], numbers.Real)
                                             and math.isfinite(sizes[lang]) and sizes[lang] > 0)]
    if bad:
        raise XelmError(f"size of {bad[0]} is {sizes[bad[0]]!r}: sizes must be positive numbers")
    return np.array([float(sizes[lang]) for lang in languages])


def write_plan(result: PlanResult, path: str | Path, plots: bool = True) -> dict[str, Path]:
    """Write the plan JSON at ``path``; plots and the TF-IDF space beside it, named after its stem."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = {}
    if result.tfidf is not None:
        written["tfidf"] = result.tfidf.save(path.parent / f"{path.stem}_tfidf")
        result.plan["tfidf_space"] = written["tfidf"].name
    if plots:
        from clustering.plots import write_plots

        written.update(write_plots(result, path.parent, path.stem))
        result.plan["plots"] = {kind: p.name for kind, p in written.items() if kind != "tfidf"}
    written["plan"] = write_json(path, result.plan)
    return written
