"""Typological placement of experts: their centroid, and the expert nearest to new languages."""

from __future__ import annotations

from collections import Counter

import numpy as np

from clustering import uriel
from clustering.fallbacks import resolve_uriel
from clustering.typology import typology_distances
from xelm.errors import XelmError


def uriel_proxies(languages: list[str], texts_by_lang: dict[str, list[str]] | None) -> dict[str, str]:
    proxy, _, unresolved = resolve_uriel(sorted(set(languages)), texts_by_lang)
    if unresolved:
        raise XelmError(f"language(s) {', '.join(unresolved)} are not in URIEL and have no text to "
                        "place them by; give a corpus with their text")
    return proxy


def typology_centroid(languages: list[str], texts_by_lang=None) -> list[float]:
    """Mean URIEL syntax + phonology + inventory (kNN) vector of ``languages``."""
    proxy = uriel_proxies(languages, texts_by_lang)
    codes = [proxy[lang] for lang in languages]
    parts = [uriel.knn_vectors(codes, name).mean(axis=0) for name in uriel.KNN_SETS]
    return [round(float(x), 4) for x in np.concatenate(parts)]


def same_script_cards(new_scripts: list[str], cards: list[dict], scripts: dict[str, str]) -> list[dict]:
    """The experts that hold a language written in the new languages' main script (all experts
    when none does): a small model shares subwords within a script, not across scripts, so a
    Cyrillic newcomer branched from a Latin-script expert starts from the wrong vocabulary."""
    main = Counter(new_scripts).most_common(1)[0][0]
    same = [c for c in cards if any(scripts.get(lang) == main for lang in c["languages"])]
    return same or cards


def nearest_expert(new_languages: list[str], cards: list[dict], texts_by_lang=None,
                   scripts: dict[str, str] | None = None) -> tuple[str, float]:
    """The expert whose languages are typologically nearest (mean pairwise distance); with
    ``scripts`` (language -> main script, new languages included), nearest among the experts
    that share the new languages' script."""
    if not cards:
        raise XelmError("the registry has no experts to branch from: use --parent base")
    if scripts is not None:
        cards = same_script_cards([scripts[lang] for lang in new_languages], cards, scripts)
    all_langs = sorted({*new_languages, *(lang for c in cards for lang in c["languages"])})
    proxy = uriel_proxies(all_langs, texts_by_lang)
    codes = sorted(set(proxy.values()))
    d = typology_distances(codes)
    at = {c: i for i, c in enumerate(codes)}
    new_idx = [at[proxy[lang]] for lang in new_languages]
    scores = {c["name"]: float(d[np.ix_(new_idx, [at[proxy[lang]] for lang in c["languages"]])].mean())
              for c in cards}
    best = min(scores, key=scores.get)
    return best, scores[best]
