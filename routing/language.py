"""Language routing: the caller names the language; its expert(s) get the weight.

A language no expert was trained on goes to the typologically nearest expert, by the same
URIEL distance the clustering uses (``experts.typology.nearest_expert``), and the routing
says so. A language URIEL lacks is placed by its text's nearest URIEL language (TF-IDF).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from clustering import uriel
from experts.typology import nearest_expert
from routing.routes import Routing
from xelm.errors import XelmError
from xelm.languages import language_name, to_iso3


class LanguageRouter:
    name = "language"

    def __init__(self, cards: list[dict], reference_texts: Callable[[], dict[str, list[str]]] | None = None):
        """``reference_texts()``: the experts' languages' texts, only read to place a language
        URIEL lacks."""
        self.cards, self.names = cards, [c["name"] for c in cards]
        self.reference_texts = reference_texts
        self._rows: dict[str, tuple[np.ndarray, dict]] = {}

    def route(self, texts: list[str], top_k: int | None = None, lang: str | list[str] | None = None) -> Routing:
        if lang is None:
            raise XelmError("the language router needs the text's language: give --lang ISO (e.g. --lang fra), "
                            "or use --router langid to identify it from the text")
        langs = [lang] * len(texts) if isinstance(lang, str) else list(lang)
        if len(langs) != len(texts):
            raise XelmError(f"{len(langs)} languages given for {len(texts)} texts: give one per text, or one for all")
        rows = [self.row(code, [t for t, c in zip(texts, langs) if c == code]) for code in langs]
        return Routing(self.names, np.stack([r[0] for r in rows]), self.name, [r[1] for r in rows]).top_k(top_k)

    def row(self, code: str, texts: list[str] = ()) -> tuple[np.ndarray, dict]:
        """Weights over experts for language ``code``, and the note that explains them."""
        code = to_iso3(code, "--lang")
        if code not in self._rows:
            w = np.array([float(code in c["languages"]) for c in self.cards])
            note = {"language": code}
            if not w.any():
                name, distance = self._nearest(code, texts)
                w[self.names.index(name)] = 1.0
                note["fallback"] = (f"no expert was trained on {code} ({language_name(code)}); routed to the "
                                    f"typologically nearest expert {name} (distance {distance:.3f})")
            self._rows[code] = (w / w.sum(), note)
        return self._rows[code]

    def _nearest(self, code: str, texts) -> tuple[str, float]:
        if not self.cards:
            raise XelmError("the registry has no experts to route to: train some with `xelm expert train`")
        refs = None
        if not uriel.has_uriel(code) and self.reference_texts is not None:
            refs = {**self.reference_texts(), code: list(texts)} if texts else None
        return nearest_expert([code], self.cards, refs)
