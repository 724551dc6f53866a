"""Zero-shot cross-lingual transfer tasks built from the parallel corpus.

Both use only the held-out articles (validation + test splits: UDHR articles 25–30), which no
model trained on, so the tasks measure transfer rather than memorised parallel text:

- **article classification**: a logistic-regression probe trained on English paragraphs'
  embeddings predicts which article a paragraph of any other language comes from;
- **retrieval**: each non-English article finds its English counterpart by cosine similarity.

Each language's embeddings are centred on their own mean first (Libovický et al. 2020, "On the
language neutrality of pre-trained multilingual representations"): a small encoder's mean-pooled
states mostly say which language a text is in, and that offset, not the content, would decide
every prediction. Both models get the same treatment.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

EmbedFn = Callable[[list[str], str], np.ndarray]  # (texts, language) -> [n, d] embeddings


def paragraphs(units: list[str], texts: list[str]) -> tuple[list[str], list[str]]:
    """Split each unit's text into its paragraphs, labelled with the unit."""
    out_t, out_u = [], []
    for unit, text in zip(units, texts):
        for p in text.split("\n"):
            if p.strip():
                out_t.append(p)
                out_u.append(unit)
    return out_t, out_u


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


def _centred(x: np.ndarray) -> np.ndarray:
    """Unit vectors after removing the language's mean (see the module doc)."""
    return _unit(x - x.mean(0, keepdims=True)) if len(x) > 1 else _unit(x)


def article_classification(embed: EmbedFn, rows: dict[str, tuple[list[str], list[str]]],
                           source: str = "eng") -> dict[str, float]:
    """Accuracy per target language of an English-trained probe; ``rows[lang] = (units, texts)``."""
    from sklearn.linear_model import LogisticRegression

    x_t, y = paragraphs(*rows[source])
    probe = LogisticRegression(max_iter=2000, C=10.0).fit(_centred(embed(x_t, source)), y)
    out = {}
    for lang, (units, texts) in rows.items():
        if lang == source:
            continue
        t, u = paragraphs(units, texts)
        if t:
            out[lang] = float((probe.predict(_centred(embed(t, lang))) == np.array(u)).mean())
    return out


def retrieval(embed: EmbedFn, rows: dict[str, tuple[list[str], list[str]]], source: str = "eng") -> dict[str, float]:
    """Accuracy@1 per language of finding the English article with the same number."""
    src_units, src_texts = rows[source]
    src = _centred(embed(src_texts, source))
    out = {}
    for lang, (units, texts) in rows.items():
        if lang == source or not texts:
            continue
        sims = _centred(embed(texts, lang)) @ src.T
        found = [src_units[i] for i in sims.argmax(1)]
        out[lang] = float(np.mean([f == u for f, u in zip(found, units)]))
    return out


def chance_levels(rows: dict[str, tuple[list[str], list[str]]], source: str = "eng") -> dict[str, float]:
    """What guessing scores: always the most common article (classification, mean over target
    languages) and a random English article (retrieval)."""
    majority = []
    for lang, (units, texts) in rows.items():
        if lang != source:
            _, u = paragraphs(units, texts)
            if u:
                majority.append(max(u.count(x) for x in set(u)) / len(u))
    return {"classification": float(np.mean(majority)) if majority else 0.0,
            "retrieval": 1.0 / max(len(rows[source][0]), 1)}
