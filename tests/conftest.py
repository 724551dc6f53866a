"""Shared fixtures: the embedded corpus and one tiny tokenizer, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from xelm.data import load_corpus



@pytest.fixture(scope="session")
def udhr():
    """The embedded UDHR corpus: a DatasetDict with train/validation/test splits."""
    return load_corpus("udhr")


@pytest.fixture(scope="session")
def tiny_tokenizer(udhr, tmp_path_factory) -> Path:
    """Directory of a Unigram tokenizer (vocab 800, byte fallback) trained on ~150k characters
    of temperature-sampled UDHR train text; load it with ``xelm.tokenizer.load_tokenizer`` or
    ``AutoTokenizer.from_pretrained``. Do not write into it (other tests share it)."""
    from xelm.tokenizer import train_tokenizer

    texts: dict[str, list[str]] = {}
    for lang, text in zip(udhr["train"]["lang"], udhr["train"]["text"]):
        texts.setdefault(lang, []).append(text)
    out = tmp_path_factory.mktemp("tiny_tokenizer")
    train_tokenizer(texts, 800, out, temperature=0.3, n_chars=150_000, seed=0, show_progress=False)
    return out
