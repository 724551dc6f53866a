"""Masked-LM batches (:class:`MLMBatch`, the one batch type): packed training batches, a pure
function of (seed, step) so resuming needs no data state, and length-bucketed batches of
separate texts for scoring and embedding.

Documents are concatenated into one stream and cut into rows of ``seq_len`` tokens with
segment ids (a document cut at a row's end continues as a new segment in the next row), so
no position is padding. Each row gets exactly ``K = round(mask_ratio * seq_len)`` masked
positions (80% [MASK], 10% random token, 10% unchanged), so the head runs on [B, K] states.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import numpy as np
from flax import struct

from xelm.errors import XelmError

VALIDATION_SEED = 12345  # the fixed validation batches' seed: the same masks for every model
MIN_LEN = 16  # the shortest padded length of a length bucket


@struct.dataclass
class MLMBatch:
    """A masked-LM batch: training, validation, scoring and embedding all use this one type.

    ``segment_ids_BxS`` is 0 on padding; ``mask_weights_BxK`` is 0 on mask slots that are only
    there to fill K (padding of the masked positions). A pytree: it passes through ``jax.jit``.
    """

    input_ids_BxS: np.ndarray
    segment_ids_BxS: np.ndarray
    positions_BxS: np.ndarray
    mask_positions_BxK: np.ndarray
    mask_labels_BxK: np.ndarray
    mask_weights_BxK: np.ndarray


class TokenizedCorpus:
    """Per language, the token ids of each document ([CLS] ... [SEP]), ready to pack."""

    def __init__(self, docs_by_lang: Mapping[str, list[np.ndarray]], special_ids: list[int]):
        self.docs = {lang: docs for lang, docs in docs_by_lang.items() if docs}
        if not self.docs:
            raise XelmError("the training corpus has no documents")
        self.special_ids = np.array(sorted(set(special_ids)), dtype=np.int32)
        self.mean_length = {lang: float(np.mean([len(d) for d in docs])) for lang, docs in self.docs.items()}

    @classmethod
    def from_texts(cls, tokenizer, langs: list[str], texts: list[str]) -> TokenizedCorpus:
        ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        docs: dict[str, list[np.ndarray]] = {}
        for lang, seq in zip(langs, ids):
            docs.setdefault(lang, []).append(np.asarray(seq, dtype=np.int32))
        return cls(docs, tokenizer.all_special_ids)

    def sizes(self) -> dict[str, int]:
        """Tokens per language: what the temperature sampling weighs."""
        return {lang: int(sum(len(d) for d in docs)) for lang, docs in self.docs.items()}

    def document_draws(self, token_shares: Mapping[str, float]) -> tuple[list[str], np.ndarray]:
        """The languages and the chance of drawing each one's next document so that, in
        expectation, language l gets ``token_shares[l]`` of the tokens: a language of long
        documents is drawn less often (share / mean document length, renormalised)."""
        langs = list(token_shares)
        p = np.array([token_shares[lang] / self.mean_length[lang] for lang in langs], dtype=np.float64)
        return langs, p / p.sum()


def pack(docs: list[np.ndarray], rows: int, seq_len: int):
    """Concatenate ``docs`` and cut into [rows, seq_len]; returns ids, segment ids, positions."""
    stream = np.concatenate(docs)[: rows * seq_len]
    if len(stream) < rows * seq_len:
        raise XelmError(f"not enough text to fill {rows} rows of {seq_len} tokens")
    doc_id = np.repeat(np.arange(len(docs)), [len(d) for d in docs])[: rows * seq_len]
    start = np.concatenate([[0], np.cumsum([len(d) for d in docs])[:-1]])
    pos = np.arange(rows * seq_len) - start[doc_id]
    ids, doc_id, pos = (a.reshape(rows, seq_len) for a in (stream, doc_id, pos))
    # A document continued from the previous row restarts at position 0 in its new segment.
    pos = pos - np.where(doc_id == doc_id[:, :1], pos[:, :1], 0)
    segment = doc_id - doc_id[:, :1] + 1
    return ids.astype(np.int32), segment.astype(np.int32), pos.astype(np.int32)


def mask_rows(ids_BxS: np.ndarray, mask_ratio: float, rng: np.random.Generator, mask_id: int,
              vocab_size: int, special_ids: np.ndarray):
    """Choose K positions per row among non-special tokens and corrupt them BERT-style."""
    b, s = ids_BxS.shape
    k = max(1, round(mask_ratio * s))
    candidates = ~np.isin(ids_BxS, special_ids)
    # Random keys, specials pushed last: the K smallest keys are the masked positions.
    keys = rng.random((b, s)) + (~candidates) * 2.0
    positions_BxK = np.sort(np.argpartition(keys, k - 1, axis=1)[:, :k], axis=1).astype(np.int32)
    labels_BxK = np.take_along_axis(ids_BxS, positions_BxK, axis=1)
    weights_BxK = np.take_along_axis(candidates, positions_BxK, axis=1).astype(np.float32)
    roll = rng.random((b, k))
    random_tokens = rng.integers(0, vocab_size, (b, k))
    new_BxK = np.where(roll < 0.8, mask_id, np.where(roll < 0.9, random_tokens, labels_BxK))
    inputs = ids_BxS.copy()
    np.put_along_axis(inputs, positions_BxK, np.where(weights_BxK > 0, new_BxK, labels_BxK), axis=1)
    return inputs, positions_BxK, labels_BxK.astype(np.int32), weights_BxK


def make_batch(corpus: TokenizedCorpus, probs: Mapping[str, float], *, batch_size: int, seq_len: int,
               mask_ratio: float, mask_id: int, vocab_size: int, seed: int,
               step: int) -> tuple[MLMBatch, dict[str, int]]:
    """The batch for ``step`` and its tokens per language: ``probs`` is each language's expected
    share of the tokens (not of the documents), documents uniformly within each language."""
    rng = np.random.default_rng([seed, step])
    langs, p = corpus.document_draws(probs)
    need, docs, counts = batch_size * seq_len, [], {}
    while need > 0:
        lang = langs[rng.choice(len(langs), p=p)]
        pool = corpus.docs[lang]
        doc = pool[rng.integers(len(pool))]
        docs.append(doc)
        counts[lang] = counts.get(lang, 0) + min(len(doc), need)
        need -= len(doc)
    ids, segments, positions = pack(docs, batch_size, seq_len)
    inputs, mpos, labels, weights = mask_rows(ids, mask_ratio, rng, mask_id, vocab_size, corpus.special_ids)
    return MLMBatch(inputs, segments, positions, mpos, labels, weights), counts


def bucket(n: int, lo: int = 1, hi: int | None = None) -> int:
    """``n`` rounded up to a power of two, at least ``lo`` (and at most ``hi``): a few shapes,
    so a few compilations, serve every batch."""
    b = max(lo, 1 << max(0, math.ceil(math.log2(max(n, 1)))))
    return b if hi is None else min(b, hi)


def length_bucketed(seqs: list[np.ndarray], masks: list[np.ndarray], *, mask_id: int, pad_id: int,
                    batch_tokens: int, max_len: int) -> Iterator[tuple[np.ndarray, MLMBatch]]:
    """Yield (rows, batch) over ``seqs`` (one text per row, padded), shortest first; ``rows`` are
    the batch's real rows' indices in ``seqs``, and ``masks[i]`` the positions of text i set to
    [MASK] (may be empty).

    Rows, length and masks are padded to power-of-two buckets, so a few compilations serve any
    mix of texts and short texts do not pay for long ones; a batch holds as many rows as fit
    ``batch_tokens`` padded tokens (many short texts, few long ones), which also keeps the last,
    partly empty batch small.
    """
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    padded = [bucket(len(seqs[i]), MIN_LEN, max_len) for i in order]  # non-decreasing
    start = 0
    while start < len(order):
        b = 1  # double the rows while more remain and twice as many still fit in batch_tokens
        while start + b < len(order) and 2 * b * padded[min(start + 2 * b, len(order)) - 1] <= batch_tokens:
            b *= 2
        rows = np.array(order[start:start + b])
        start += len(rows)
        b, s = bucket(len(rows)), padded[start - 1]
        k = bucket(max(len(masks[i]) for i in rows))
        ids = np.full((b, s), pad_id, np.int32)
        seg = np.zeros((b, s), np.int32)
        mpos, labels, weights = np.zeros((b, k), np.int32), np.zeros((b, k), np.int32), np.zeros((b, k), np.float32)
        for r, i in enumerate(rows):
            seq, m = seqs[i], masks[i]
            ids[r, :len(seq)], seg[r, :len(seq)] = seq, 1
            mpos[r, :len(m)], labels[r, :len(m)], weights[r, :len(m)] = m, seq[m], 1.0
            ids[r, m] = mask_id
        pos = np.broadcast_to(np.arange(s, dtype=np.int32), (b, s)).copy()
        yield rows, MLMBatch(ids, seg, pos, mpos, labels, weights)
