"""Packed, masked MLM batches, a pure function of (seed, step): resuming needs no data state.

Documents are concatenated into one stream and cut into rows of ``seq_len`` tokens with
segment ids (a document cut at a row's end continues as a new segment in the next row), so
no position is padding. Each row gets exactly ``K = round(mask_ratio * seq_len)`` masked
positions (80% [MASK], 10% random token, 10% unchanged), so the head runs on [B, K] states.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from xelm.errors import XelmError


class TokenizedCorpus:
    """Per language, the token ids of each document ([CLS] ... [SEP]), ready to pack."""

    def __init__(self, docs_by_lang: Mapping[str, list[np.ndarray]], special_ids: list[int]):
        self.docs = {lang: docs for lang, docs in docs_by_lang.items() if docs}
        if not self.docs:
            raise XelmError("the training corpus has no documents")
        self.special_ids = np.array(sorted(set(special_ids)), dtype=np.int32)

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


def make_batch(corpus: TokenizedCorpus, probs: Mapping[str, float], batch_size: int, seq_len: int,
               mask_ratio: float, mask_id: int, vocab_size: int, seed: int, step: int) -> dict:
    """The batch for ``step``: languages drawn by ``probs``, documents uniformly within each."""
    rng = np.random.default_rng([seed, step])
    langs = list(probs)
    p = np.array([probs[lang] for lang in langs])
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
    return {"input_ids": inputs, "segment_ids": segments, "positions": positions,
            "mask_positions": mpos, "mask_labels": labels, "mask_weights": weights,
            "tokens_by_lang": counts}
