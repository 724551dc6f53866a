"""TF-IDF routing (c-BTM): weights softmax(-d²/T) over the cosine distance d from a text to each
expert in a character n-gram TF-IDF space.

The space is fitted on the experts' training text, one document per language, and an expert
is as far from a text as its nearest language: an expert is the set of its languages'
centroids, so this works whatever clustering made the experts (typology, TF-IDF, model
geometry, HMR additions). One mean centroid per expert (c-BTM's k-means centroid) blurs a
typology cluster of a hundred languages and several scripts; the nearest language was chosen
over it on the validation split (``benchmarks/router_choices.py``; figures in the README).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clustering.tfidf import TfidfSpace
from routing.routes import Routing, check_temperature, softmax_rows
from routing.runfiles import expert_texts, fingerprint, read_meta, router_dir, write_meta
from xelm.errors import XelmError

TEMPERATURE = 0.1


def fit_language_space(texts_by_lang: dict[str, list[str]]) -> TfidfSpace:
    """The TF-IDF space of the experts' languages, with one centroid per language."""
    langs = sorted(lang for lang in texts_by_lang if texts_by_lang[lang])
    space, x_LxD = TfidfSpace.fit(["\n".join(texts_by_lang[lang]) for lang in langs])
    space.centroids_KxD, space.names = x_LxD, langs
    return space


def load_or_fit(run_dir: str | Path, cards: list[dict], temperature: float = TEMPERATURE,
                cache: str = "tfidf") -> TfidfRouter:
    """The router among the experts of ``cards``, its space fitted on their languages' text
    only (so the experts an evaluation compares are routed alike whatever else the registry
    holds): read from ``DIR/router/<cache>``, refitted when ``cards`` changed since it was saved."""
    path = router_dir(run_dir) / cache
    meta = read_meta(path / "router.json")
    space = None
    if meta and meta.get("fingerprint") == fingerprint(cards):
        try:
            space = TfidfSpace.load(path)
        except Exception:  # noqa: BLE001 - a damaged cache (truncated npz, ...) of any kind is refitted
            space = None
    if space is None:
        space = fit_language_space(expert_texts(run_dir, cards))
        space.save(path)
        write_meta(path / "router.json", {"fingerprint": fingerprint(cards)})
    return TfidfRouter(space, {c["name"]: c["languages"] for c in cards}, temperature)


class TfidfRouter:
    name = "tfidf"

    def __init__(self, space: TfidfSpace, experts: dict[str, list[str]], temperature: float = TEMPERATURE):
        """``experts``: each expert's languages (centroids of ``space``, named by language)."""
        temperature = check_temperature(temperature, "TF-IDF router temperature")
        at = {lang: i for i, lang in enumerate(space.names)}
        self.columns = {}
        for name, langs in experts.items():
            self.columns[name] = [at[lang] for lang in langs if lang in at]
            if not self.columns[name]:
                raise XelmError(f"expert {name!r}: none of its languages ({', '.join(langs)}) has training "
                                "text to place it in the TF-IDF router")
        self.space, self.names, self.temperature = space, list(experts), temperature

    def route(self, texts: list[str], top_k: int | None = None, lang=None) -> Routing:
        x_NxD, known_N = self.space.transform_known(texts)
        d_NxL = 1.0 - x_NxD @ self.space.centroids_KxD.T
        d_NxE = np.stack([d_NxL[:, cols].min(1) for cols in self.columns.values()], axis=1)
        w_NxE = softmax_rows(-d_NxE**2 / self.temperature)
        w_NxE[~known_N] = 1.0 / len(self.names)
        notes = [{} if known else {"fallback": "no character n-gram of the text occurs in the experts' "
                                               "training text: weights are uniform"} for known in known_N]
        return Routing(self.names, w_NxE, self.name, notes).top_k(top_k)
