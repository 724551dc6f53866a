"""Corpora (embedded UDHR, local files, HF hub datasets) and language-balanced sampling."""

from xelm.data.corpus import SPLITS, corpus_stats, load_corpus, texts_by_lang
from xelm.data.sampling import language_probabilities, sample_texts

__all__ = ["SPLITS", "corpus_stats", "language_probabilities", "load_corpus", "sample_texts", "texts_by_lang"]
