"""What every router returns: weights over expert names per text, and why (fallbacks, languages).

Weights are a dense [texts, experts] array whose rows sum to one; the ensemble runs only the
experts a row gives weight to, so ``groups()`` is what decides which experts get loaded.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np

from xelm.errors import XelmError

# A note's key when a text is mostly in a script no expert was trained on and was routed by the
# posterior router instead (its value: the script). Other fallbacks (a language without an expert,
# no known n-gram) say "fallback" only: evaluation re-routes the unseen-script texts alone.
UNSEEN_SCRIPT = "unseen_script"


@dataclass
class Routing:
    names: list[str]  # the experts, one per column
    weights: np.ndarray  # [N, E], non-negative, rows sum to one
    router: str
    notes: list[dict] = field(default_factory=list)  # per text: language, fallback, ...

    def experts(self, i: int = 0) -> list[dict]:
        """Text ``i``'s experts with weight, best first (ties by name)."""
        row = self.weights[i]
        order = sorted(np.flatnonzero(row > 0), key=lambda e: (-row[e], self.names[e]))
        return [{"name": self.names[e], "weight": float(row[e])} for e in order]

    def to_json(self, i: int = 0) -> dict:
        return {"experts": self.experts(i), "router": self.router, **(self.notes[i] if self.notes else {})}

    def groups(self) -> dict[tuple[str, ...], list[int]]:
        """Texts that need the same experts (the ones with non-zero weight), together."""
        out: dict[tuple[str, ...], list[int]] = {}
        for i, row in enumerate(self.weights):
            out.setdefault(tuple(self.names[e] for e in np.flatnonzero(row > 0)), []).append(i)
        return out

    def top_k(self, k: int | None) -> Routing:
        return Routing(self.names, keep_top_k(self.weights, k), self.router, self.notes)


MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-6, 1e6


def check_temperature(t, what: str = "router temperature") -> float:
    """A softmax temperature that keeps every weight a number: finite, within [1e-6, 1e6]."""
    if isinstance(t, bool) or not isinstance(t, numbers.Real) or not MIN_TEMPERATURE <= t <= MAX_TEMPERATURE:
        raise XelmError(f"{what} {t!r} is out of range: give a number from {MIN_TEMPERATURE:g} to "
                        f"{MAX_TEMPERATURE:g} (e.g. 0.1)")
    return float(t)


def check_top_k(k, n_experts: int) -> int | None:
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= n_experts:
        raise XelmError(f"top-k {k!r} is out of range: give a whole number from 1 to {n_experts} "
                        f"(the registry's experts)")
    return int(k)


def keep_top_k(w_NxE: np.ndarray, k: int | None) -> np.ndarray:
    """Zero all but each row's k largest weights (ties: first column) and renormalise."""
    k = check_top_k(k, w_NxE.shape[1])
    if k is None or k >= w_NxE.shape[1]:
        return w_NxE
    keep = np.argsort(-w_NxE, axis=1, kind="stable")[:, :k]
    out = np.zeros_like(w_NxE)
    np.put_along_axis(out, keep, np.take_along_axis(w_NxE, keep, 1), 1)
    return out / out.sum(1, keepdims=True)


def softmax_rows(logits_NxE: np.ndarray) -> np.ndarray:
    z = np.exp(logits_NxE - logits_NxE.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)
