"""Languages URIEL lacks get another language's vectors, and the plan says which and why.

In order: a curated stand-in for ISO codes newer than URIEL's data (same family, same place);
else, when texts are given, the URIEL language nearest by character n-gram TF-IDF; else the
language is left unresolved and the caller raises a clear error.
"""

from __future__ import annotations

import numpy as np

from clustering import uriel
from clustering.tfidf import TfidfSpace
from xelm.languages import language_name

STAND_INS = {
    "cnr": ("srp", "Montenegrin (ISO 639-3 since 2017, after URIEL's data) shares Serbian's "
                   "Serbo-Croatian standard and place"),
    "hyw": ("hye", "Western Armenian (ISO 639-3 since 2018, after URIEL's data) is split from "
                   "Armenian, same family and region"),
}


def resolve_uriel(languages: list[str], texts_by_lang: dict[str, list[str]] | None = None
                  ) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """URIEL code to use for each language, the reason for each fallback, and the unresolved codes."""
    proxy = {lang: lang for lang in languages if uriel.has_uriel(lang)}
    reasons: dict[str, str] = {}
    for lang in languages:
        if lang not in proxy and lang in STAND_INS and uriel.has_uriel(STAND_INS[lang][0]):
            stand_in, why = STAND_INS[lang]
            proxy[lang] = stand_in
            reasons[lang] = f"not in URIEL; uses {stand_in} ({language_name(stand_in)}): {why}"
    missing = [lang for lang in languages if lang not in proxy]
    if missing and texts_by_lang:
        for lang, (nearest, distance) in nearest_by_tfidf(missing, texts_by_lang).items():
            proxy[lang] = nearest
            reasons[lang] = (f"not in URIEL; uses {nearest} ({language_name(nearest)}), its nearest "
                             f"URIEL language by character n-gram TF-IDF (cosine distance {distance:.3f})")
    return proxy, reasons, [lang for lang in languages if lang not in proxy]


def nearest_by_tfidf(queries: list[str], texts_by_lang: dict[str, list[str]]) -> dict[str, tuple[str, float]]:
    """For each query language with texts, the nearest language with texts that URIEL has."""
    queries = [q for q in queries if texts_by_lang.get(q)]
    candidates = sorted(lang for lang in texts_by_lang if uriel.has_uriel(lang) and texts_by_lang[lang])
    if not queries or not candidates:
        return {}
    documents = ["\n".join(texts_by_lang[lang]) for lang in queries + candidates]
    _, x_NxD = TfidfSpace.fit(documents)
    d = 1.0 - x_NxD[: len(queries)] @ x_NxD[len(queries):].T
    best = np.argmin(d, axis=1)
    return {q: (candidates[b], float(d[i, b])) for i, (q, b) in enumerate(zip(queries, best))}
