"""Corpora (embedded UDHR, local files, HF hub datasets) and language-balanced sampling.

The corpus names resolve on first use (PEP 562): training imports only ``sampling``, so a train
step runs where HF ``datasets`` is not installed (an accelerator image) and starts sooner."""

import importlib

_SOURCES = {"SPLITS": "corpus", "columns": "corpus", "corpus_stats": "corpus", "languages_with_text": "corpus",
            "load_corpus": "corpus", "texts_by_lang": "corpus",
            "language_probabilities": "sampling", "sample_texts": "sampling"}
__all__ = sorted(_SOURCES)


def __getattr__(name: str):
    if name not in _SOURCES:
        raise AttributeError(f"module 'xelm.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"xelm.data.{_SOURCES[name]}"), name)
