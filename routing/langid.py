"""Language identification from the text (character 1-3-grams, multinomial naive Bayes), then
routing as if the caller had named that language.

Naive Bayes because it is the classic language identifier (langid.py, CLD): one pass over
the counts to fit, and accurate on hundreds of languages (its accuracy on the run's test
split is saved beside it and printed by ``xelm route``). The model is saved as plain
arrays (sparse per-language n-gram counts), not a pickle; the counts are sparse because most
n-grams occur in few languages, and log θ = log α + log1p(N/α) - log(T + αF) keeps scoring
sparse too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import sparse

from clustering.tfidf import not_blank
from routing.language import LanguageRouter
from routing.routes import Routing, softmax_rows
from routing.runfiles import corpus_split, read_meta, router_dir, write_meta
from xelm.data import columns
from xelm.errors import XelmError
from xelm.rundir import RunDir

NGRAMS = (1, 3)
MAX_FEATURES = 2**15
ALPHA = 0.01


class LangId:
    def __init__(self, vocabulary: list[str], languages: list[str], counts_LxF: sparse.csr_matrix,
                 alpha: float = ALPHA, ngram_range=NGRAMS):
        from sklearn.feature_extraction.text import CountVectorizer  # scikit-learn only where used: start-up time

        self.vocabulary, self.languages, self.alpha, self.ngram_range = vocabulary, languages, alpha, tuple(ngram_range)
        self.counts_LxF = counts_LxF.tocsr()
        self._log1p_LxF = self.counts_LxF.copy()
        self._log1p_LxF.data = np.log1p(self._log1p_LxF.data / alpha)
        totals_L = np.asarray(self.counts_LxF.sum(1)).ravel()
        self._log_norm_L = np.log(alpha) - np.log(totals_L + alpha * len(vocabulary))
        self._not_blank_F = not_blank(vocabulary)  # the space padding every word is known to any text
        self._vectorizer = CountVectorizer(analyzer="char_wb", ngram_range=self.ngram_range, dtype=np.float64,
                                           vocabulary={g: i for i, g in enumerate(vocabulary)})

    @classmethod
    def fit(cls, texts: list[str], langs: list[str], alpha: float = ALPHA) -> LangId:
        if not texts:
            raise XelmError("language identification needs training text: the corpus train split is empty")
        from sklearn.feature_extraction.text import CountVectorizer

        vec = CountVectorizer(analyzer="char_wb", ngram_range=NGRAMS, max_features=MAX_FEATURES, dtype=np.float64)
        x_NxF = vec.fit_transform(texts)
        vocabulary = [None] * len(vec.vocabulary_)
        for gram, col in vec.vocabulary_.items():
            vocabulary[col] = gram
        languages = sorted(set(langs))
        at = {lang: i for i, lang in enumerate(languages)}
        onehot_LxN = sparse.csr_matrix((np.ones(len(langs)), ([at[lang] for lang in langs], np.arange(len(langs)))),
                                       shape=(len(languages), len(langs)))
        return cls(vocabulary, languages, (onehot_LxN @ x_NxF).tocsr(), alpha)

    def log_posterior(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """[N, L] log p(language | text) under a uniform prior, and [N] whether any n-gram was known."""
        x_NxF = self._vectorizer.transform(list(texts))
        n_N = np.asarray(x_NxF.sum(1)).ravel()
        scores = np.asarray((x_NxF @ self._log1p_LxF.T).todense()) + n_N[:, None] * self._log_norm_L[None, :]
        return np.log(softmax_rows(scores) + 1e-30), x_NxF @ self._not_blank_F > 0

    def predict(self, texts: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Language, its probability, and whether the text had any known n-gram."""
        logp_NxL, known = self.log_posterior(texts)
        best = logp_NxL.argmax(1)
        return [self.languages[i] for i in best], np.exp(logp_NxL.max(1)), known

    def accuracy(self, texts: list[str], langs: list[str]) -> float:
        return float(np.mean([p == g for p, g in zip(self.predict(texts)[0], langs)])) if texts else float("nan")

    def save(self, directory: str | Path, extra: dict | None = None) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        c = self.counts_LxF
        np.savez_compressed(directory / "langid.npz", data=c.data.astype(np.float32), indices=c.indices,
                            indptr=c.indptr, shape=np.array(c.shape))
        write_meta(directory / "langid.json", {"format": "xelm-langid-1", "alpha": self.alpha,
                                               "ngram_range": list(self.ngram_range), "languages": self.languages,
                                               **(extra or {}), "vocabulary": self.vocabulary})
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> LangId:
        directory = Path(directory)
        meta = read_meta(directory / "langid.json")
        try:
            with np.load(directory / "langid.npz") as a:
                counts = sparse.csr_matrix((a["data"].astype(np.float64), a["indices"], a["indptr"]),
                                           shape=tuple(a["shape"]))
            return cls(meta["vocabulary"], meta["languages"], counts, meta["alpha"], meta["ngram_range"])
        except (OSError, KeyError, TypeError, ValueError) as e:
            raise XelmError(f"damaged language identifier in {directory} ({e}); delete the folder to "
                            "refit it") from None


def load_or_fit(run_dir: str | Path, languages: list[str] | None = None) -> LangId:
    """``DIR/router/langid``: fitted on the run corpus's train split (all its languages, or
    ``languages``) the first time; its accuracy on the test split is saved beside it."""
    path = router_dir(run_dir) / "langid"
    corpus = RunDir(run_dir).config().data.corpus
    meta = read_meta(path / "langid.json")
    if meta and meta.get("corpus") == corpus and (languages is None or sorted(languages) == meta["languages"]):
        return LangId.load(path)
    train = corpus_split(run_dir, "train", languages)
    model = LangId.fit(*columns(train, "text", "lang"))
    test = corpus_split(run_dir, "test", model.languages)
    accuracy = model.accuracy(*columns(test, "text", "lang"))
    model.save(path, {"corpus": corpus, "test_accuracy": accuracy, "test_texts": len(test)})
    return model


def saved_accuracy(run_dir: str | Path) -> dict | None:
    """The saved identifier's accuracy on the test split, its test texts and languages."""
    meta = read_meta(router_dir(run_dir) / "langid" / "langid.json") or {}
    return {"test_accuracy": meta.get("test_accuracy"), "test_texts": meta.get("test_texts"),
            "languages": len(meta.get("languages", []))} if meta else None


class LangIdRouter:
    name = "langid"

    def __init__(self, langid: LangId, language_router: LanguageRouter):
        self.langid, self.by_language = langid, language_router
        self.names = language_router.names

    def route(self, texts: list[str], top_k: int | None = None, lang=None) -> Routing:
        if lang is not None:
            raise XelmError("--lang names the language itself: use --router language with it, not langid")
        langs, prob, known = self.langid.predict(texts)
        r = self.by_language.route(texts, None, lang=langs)
        notes = [{**note, "language_probability": round(float(p), 4)} for note, p in zip(r.notes, prob)]
        weights = r.weights.copy()
        for i in np.flatnonzero(~known):
            weights[i] = 1.0 / len(self.names)
            notes[i] = {"fallback": "no character n-gram of the text was seen in the corpus: the language "
                                    "cannot be identified; weights are uniform"}
        return Routing(self.names, weights, self.name, notes).top_k(top_k)
