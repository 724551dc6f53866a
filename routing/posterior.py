"""Posterior routing (BTM / X-ELM "bayes"): p(e | x) ∝ p(x | e) p(e).

p(x | e) is expert e's masked-LM likelihood of the text itself: the sum of log-probabilities
of the true tokens at deterministic masked positions. For routing alone (``xelm route``) half
the tokens are masked (drawn with another seed than scoring uses): the ratio was chosen on the
validation split (README, "Which split chose what"). When the routed mixture is *scored*
(``xelm evaluate``), the router must never read the likelihood of a token it is scored on:
:func:`held_out_loglik` gives, for each disjoint mask set, the evidence of the other sets only.
The prior is uniform, or the mean uniform-prior posterior over validation text (how often each
expert is the right one).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from routing.routes import Routing, softmax_rows
from routing.runfiles import cached_for, router_dir
from xelm.errors import XelmError

PRIORS = ("uniform", "validation")


class PosteriorRouter:
    name = "posterior"

    def __init__(self, names: list[str], loglik: Callable[[list[str]], np.ndarray], prior: np.ndarray | None = None):
        """``loglik(texts)`` -> [N, E] log p(text | expert) in ``names`` order."""
        self.names, self.loglik = list(names), loglik
        self.prior = np.full(len(names), 1 / len(names)) if prior is None else np.asarray(prior, np.float64)

    def route(self, texts: list[str], top_k: int | None = None, lang=None) -> Routing:
        if lang is not None:
            raise XelmError("--lang names the language itself: use --router language with it, not posterior")
        w_NxE = softmax_rows(self.loglik(texts) + np.log(np.maximum(self.prior, 1e-12))[None, :])
        return Routing(self.names, w_NxE, self.name, [{} for _ in texts]).top_k(top_k)


def validation_prior(run_dir: str | Path, cards: list[dict], texts: Callable[[], list[str]],
                     loglik: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """The mean uniform-prior posterior over ``texts()`` (validation text of the experts'
    languages), saved in ``DIR/router/posterior_prior.json`` for this registry."""
    names = [c["name"] for c in cards]

    def estimate() -> dict:
        sample = texts()
        if not sample:
            raise XelmError("no validation text for the experts' languages to estimate the posterior prior: "
                            "use the uniform prior")
        prior = softmax_rows(loglik(sample)).mean(0)
        return {"texts": len(sample), "prior": {n: float(p) for n, p in zip(names, prior)}}

    meta = cached_for(router_dir(run_dir) / "posterior_prior.json", cards, estimate)
    return np.array([meta["prior"][n] for n in names])


def held_out_loglik(lp_ExNxK: np.ndarray, w_NxK: np.ndarray, set_K: np.ndarray) -> np.ndarray:
    """[J, N, E] for each mask set j, each expert's log-likelihood of each text's tokens *outside*
    set j (``scoring.every_token_table``'s columns): the evidence for routing the tokens of set
    j, blind to them."""
    n_sets = int(set_K.max()) + 1 if len(set_K) else 0
    # Set j's columns are weighted by an exact 0, not subtracted from a total: their values
    # cannot leak in, not even through rounding.
    return np.stack([(lp_ExNxK * (w_NxK * (set_K != j))[None]).sum(2).T for j in range(n_sets)])
