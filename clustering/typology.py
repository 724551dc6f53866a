"""Typological distance between languages: URIEL feature sets combined with weights a user
can choose (``parse_features``); the defaults below.

Per feature set, as URIEL defines its distances: cosine distance for syntax, phonology,
inventory and family; for geography, the great-circle distance as a fraction of half the
Earth's circumference. All lie in [0, 1]; the combined distance is their weighted mean.

Weights (sum 1), and why:
- syntax 0.30: word order and morphosyntax decide most of what a text model can share;
- family 0.30: shared ancestry means cognate vocabulary and morphology;
- geography 0.20: contact brings loanwords and shared scripts;
- phonology 0.10, inventory 0.10: sound systems show in text only through spelling, and
  both sets are mostly kNN-imputed, so they get less say.
(Their purity against language families is measured in the README.)
"""

from __future__ import annotations

import numbers

import numpy as np

from clustering import uriel
from xelm.errors import XelmError

WEIGHTS = {"syntax_knn": 0.30, "phonology_knn": 0.10, "inventory_knn": 0.10, "fam": 0.30, "geo": 0.20}
FEATURE_SETS = tuple(WEIGHTS)


def parse_features(spec: str | dict | None) -> dict[str, float]:
    """``"syntax_knn,fam,geo"`` (equal weights) or ``"syntax_knn:0.5,fam:0.5"`` (or a mapping)
    -> weights that sum to 1; None -> the defaults."""
    if spec is None:
        return dict(WEIGHTS)
    if isinstance(spec, str):
        items = {}
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            name, _, weight = part.partition(":")
            if name.strip() in items:
                raise XelmError(f"feature set {name.strip()!r} is given twice in {spec!r}: give each once")
            try:
                items[name.strip()] = float(weight) if weight else 1.0
            except ValueError:
                raise XelmError(f"feature weight {part!r} is not a number: write name:weight, e.g. fam:0.5") from None
        spec = items
    unknown = [name for name in spec if name not in FEATURE_SETS]
    if unknown or not spec:
        raise XelmError(f"unknown typology feature set {', '.join(map(repr, unknown)) or '(none given)'}: "
                        f"choose among {', '.join(FEATURE_SETS)}")
    bad = [name for name, w in spec.items()
           if isinstance(w, bool) or not isinstance(w, numbers.Real) or not (np.isfinite(w) and w >= 0)]
    total = 0.0 if bad else sum(spec.values())
    if bad or total <= 0:
        raise XelmError(f"feature weights must be non-negative numbers with a positive sum, got {dict(spec)}")
    return {name: round(w / total, 6) for name, w in spec.items()}


def cosine_distances(x_NxF: np.ndarray) -> np.ndarray:
    """1 - cosine similarity; an all-zero row (e.g. a family isolate) is at distance 1 from others."""
    x = np.asarray(x_NxF, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    unit = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    d = 1.0 - unit @ unit.T
    empty = norm[:, 0] == 0
    d[empty[:, None] | empty[None, :]] = 1.0
    np.fill_diagonal(d, 0.0)
    return np.clip(d, 0.0, 1.0)


def geographic_distances(languages: list[str]) -> np.ndarray:
    unit_Nx3 = uriel.unit_positions(languages)
    d = np.arccos(np.clip(unit_Nx3 @ unit_Nx3.T, -1.0, 1.0)) / np.pi
    np.fill_diagonal(d, 0.0)
    return d


def feature_set_distances(languages: list[str]) -> dict[str, np.ndarray]:
    """One [n, n] distance matrix per URIEL feature set."""
    out = {name: cosine_distances(uriel.knn_vectors(languages, name)) for name in uriel.KNN_SETS}
    out["fam"] = cosine_distances(uriel.family_vectors(languages))
    out["geo"] = geographic_distances(languages)
    return out


def typology_distances(languages: list[str], weights: dict[str, float] = WEIGHTS) -> np.ndarray:
    """[n, n] weighted mean of the feature-set distances; every language must be in URIEL."""
    per_set = feature_set_distances(languages)
    total = sum(weights.values())
    return sum(w * per_set[name] for name, w in weights.items()) / total
