"""TF-IDF language space (c-BTM): character n-grams, truncated SVD, L2 norm, cluster centroids.

Character n-grams within word boundaries work for every script and need no stopword lists.
The space is saved as plain arrays (``tfidf.npz``) and JSON (``tfidf.json``) rather than a
pickle: loading runs no code and does not depend on the scikit-learn version. The TF-IDF
router reloads it and calls :meth:`TfidfSpace.distances_to_centroids`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import sparse

from clustering.methods import balanced_kmeans, kmeans
from xelm.errors import XelmError
from xelm.files import read_json, write_json

FORMAT = "xelm-tfidf-1"
NGRAMS = (1, 4)
MAX_FEATURES = 2**15
DIMENSIONS = 128


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


@dataclass
class TfidfSpace:
    vocabulary: list[str]  # n-gram of each TF-IDF column
    idf_V: np.ndarray
    components_DxV: np.ndarray  # truncated SVD basis
    centroids_KxD: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # unit rows
    names: list[str] = field(default_factory=list)  # cluster name of each centroid
    ngram_range: tuple[int, int] = NGRAMS
    _built: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # see _project

    @classmethod
    def fit(cls, documents: list[str], dimensions: int = DIMENSIONS, max_features: int = MAX_FEATURES,
            ngram_range: tuple[int, int] = NGRAMS, seed: int = 0) -> tuple[TfidfSpace, np.ndarray]:
        """Fit on documents (e.g. one per language); returns the space and the documents' vectors."""
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import CountVectorizer

        if not documents or not any(d.strip() for d in documents):
            raise XelmError("TF-IDF needs text: every document given is empty")
        counter = CountVectorizer(analyzer="char_wb", ngram_range=ngram_range, max_features=max_features,
                                  dtype=np.float64)
        counts = counter.fit_transform(documents)
        vocabulary = [None] * len(counter.vocabulary_)
        for gram, column in counter.vocabulary_.items():
            vocabulary[column] = gram
        df = np.bincount(counts.indices, minlength=counts.shape[1])
        idf = np.log((1 + len(documents)) / (1 + df)) + 1.0  # scikit-learn's smoothed idf
        space = cls(vocabulary, idf, np.zeros((0, len(vocabulary))), ngram_range=tuple(ngram_range))
        tfidf = space._weigh(counts)
        n_components = max(1, min(dimensions, tfidf.shape[0] - 1, tfidf.shape[1] - 1))
        algorithm = "arpack" if n_components < min(tfidf.shape) else "randomized"
        svd = TruncatedSVD(n_components, algorithm=algorithm, random_state=seed).fit(tfidf)
        space.components_DxV = svd.components_.astype(np.float32)
        return space, space._project(tfidf)

    def _weigh(self, counts) -> sparse.csr_matrix:
        """Sublinear tf times idf, rows L2-normalised (as TfidfVectorizer(sublinear_tf=True))."""
        tf = sparse.csr_matrix(counts, dtype=np.float64, copy=True)
        tf.data = 1.0 + np.log(tf.data)
        tfidf = tf.multiply(self.idf_V[None, :]).tocsr()
        norm = np.sqrt(np.asarray(tfidf.multiply(tfidf).sum(1)).ravel())
        return sparse.diags(np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)) @ tfidf

    def _project(self, tfidf) -> np.ndarray:
        # The float64 basis (C-ordered: scipy would copy any other order) and the counter are
        # built once per space, not per call: for a few texts they cost far more than the
        # projection itself, and a router serving requests calls this for every batch.
        cached = self._built.get("basis")
        if cached is None or cached[0] is not self.components_DxV:
            basis_VxD = np.ascontiguousarray(self.components_DxV.T, np.float64)
            cached = self._built["basis"] = (self.components_DxV, basis_VxD)
        return _unit_rows(np.asarray(tfidf @ cached[1]))

    def transform(self, texts: list[str]) -> np.ndarray:
        """[n, D] unit vectors of texts in the SVD space."""
        return self.transform_known(texts)[0]

    def transform_known(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`transform`, and [n] whether the text has any known n-gram with a character other
        than a space (every text has the space that pads its words)."""
        cached = self._built.get("counter")
        if cached is None or cached[0] is not self.vocabulary:
            from sklearn.feature_extraction.text import CountVectorizer

            counter = CountVectorizer(analyzer="char_wb", ngram_range=self.ngram_range,
                                      vocabulary={g: i for i, g in enumerate(self.vocabulary)}, dtype=np.float64)
            cached = self._built["counter"] = (self.vocabulary, counter, not_blank(self.vocabulary))
        counts_NxF = cached[1].transform(list(texts))
        return self._project(self._weigh(counts_NxF)), counts_NxF @ cached[2] > 0

    def distances_to_centroids(self, texts: list[str]) -> np.ndarray:
        """[n, K] cosine distances from each text to each cluster centroid (the router's input)."""
        if len(self.centroids_KxD) == 0:
            raise XelmError("this TF-IDF space has no cluster centroids: fit clusters before routing")
        return 1.0 - self.transform(texts) @ self.centroids_KxD.T

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(directory / "tfidf.npz", idf=self.idf_V, components=self.components_DxV,
                            centroids=self.centroids_KxD)
        meta = {"format": FORMAT, "ngram_range": list(self.ngram_range), "names": self.names,
                "vocabulary": self.vocabulary}
        write_json(directory / "tfidf.json", meta)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> TfidfSpace:
        directory = Path(directory)
        meta_file, arrays_file = directory / "tfidf.json", directory / "tfidf.npz"
        if not meta_file.is_file() or not arrays_file.is_file():
            raise XelmError(f"no TF-IDF space in {directory}: expected tfidf.json and tfidf.npz "
                            "(written by `xelm cluster --method tfidf`)")
        try:
            meta = read_json(meta_file, "TF-IDF space", "write it again with `xelm cluster --method tfidf`")
            with np.load(arrays_file) as arrays:
                idf, components, centroids = arrays["idf"], arrays["components"], arrays["centroids"]
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
            space = cls(list(meta["vocabulary"]), idf, components, centroids, list(meta["names"]),
                        tuple(meta["ngram_range"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise XelmError(f"damaged TF-IDF space in {directory}: {e}") from None
        if len(idf) != len(space.vocabulary) or components.shape[1] != len(idf) or \
                (len(centroids) and centroids.shape[1] != components.shape[0]) or len(space.names) != len(centroids):
            raise XelmError(f"damaged TF-IDF space in {directory}: array shapes do not match")
        return space


def not_blank(vocabulary: list[str]) -> np.ndarray:
    """[F] 1 where an n-gram holds a character other than a space (char_wb pads words with them)."""
    return np.array([float(bool(gram.strip())) for gram in vocabulary])


def fit_clusters(documents: list[str], k: int, sizes_N: np.ndarray | None = None, balanced: bool = False,
                 seed: int = 0) -> tuple[TfidfSpace, np.ndarray, np.ndarray]:
    """Fit the space, cluster the documents (balanced k-means, or plain k-means); space, labels, vectors."""
    space, x_NxD = TfidfSpace.fit(documents, seed=seed)
    if balanced:
        labels, centroids = balanced_kmeans(x_NxD, k, sizes_N, seed=seed)
    else:
        labels, centroids = kmeans(x_NxD, k, seed=seed)
    found = len(np.unique(labels))
    if found < k:  # k-means puts identical documents together: fewer distinct texts than clusters
        raise XelmError(f"TF-IDF clustering found {found} distinct clusters for k={k}: some languages' texts are "
                        f"identical or nearly so; use k <= {found} or give those languages their own texts")
    space.centroids_KxD = _unit_rows(np.asarray(centroids, dtype=np.float64))
    return space, np.asarray(labels), x_NxD
