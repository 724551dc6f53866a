"""Texts -> fixed-shape masked batches for scoring, routing and embedding.

Masking is deterministic per text: the positions come from a generator seeded with (seed,
crc32 of the text's token ids), so a text gets the same masks whatever batch it lands in, and
every expert (and the dense model) is scored on the same positions. Every chosen position
becomes [MASK] (no 80/10/10 corruption): scoring wants p(token | the rest of the text).

Rows are sorted by length and padded to power-of-two buckets (rows, length, masks), so a
few compilations serve any mix of texts and short texts do not pay for long ones; a batch
holds as many rows as fit ``batch_tokens`` padded tokens (many short texts, few long ones),
which also keeps the last, partly empty batch of each group of texts small.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from xelm.errors import XelmError

MASK_RATIO = 0.15
MIN_LEN = 16


@dataclass
class Batch:
    rows: np.ndarray  # [n] index of each real row in the caller's list
    ids: np.ndarray  # [B, S]
    segment_ids: np.ndarray  # [B, S] 1 on tokens, 0 on padding
    positions: np.ndarray  # [B, S]
    mask_positions: np.ndarray  # [B, K]
    mask_labels: np.ndarray  # [B, K]
    mask_weights: np.ndarray  # [B, K] 1 on real masked positions

    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.ids, self.segment_ids, self.positions, self.mask_positions, self.mask_labels, self.mask_weights


def check_texts(texts) -> list[str]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise XelmError("no text given: give at least one non-empty text")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise XelmError(f"text {i + 1} is empty: give non-empty text" if len(texts) > 1 else
                            "the text is empty: give non-empty text")
        try:
            t.encode("utf-8")  # undecodable bytes from a command line arrive as lone surrogates
        except UnicodeEncodeError:
            raise XelmError(f"text {i + 1} is not valid UTF-8: give UTF-8 text" if len(texts) > 1 else
                            "the text is not valid UTF-8: give UTF-8 text") from None
    return texts


def encode(tokenizer, texts: list[str], max_len: int) -> list[np.ndarray]:
    """Token ids with [CLS] ... [SEP], truncated to ``max_len``."""
    ids = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_len)["input_ids"]
    return [np.asarray(seq, dtype=np.int32) for seq in ids]


def choose_masks(ids: np.ndarray, special_ids: np.ndarray, ratio: float = MASK_RATIO, seed: int = 0) -> np.ndarray:
    """Sorted positions to mask: round(ratio x non-special tokens), at least one."""
    candidates = np.flatnonzero(~np.isin(ids, special_ids))
    if not len(candidates):
        return candidates.astype(np.int32)
    rng = np.random.default_rng([seed, zlib.crc32(ids.tobytes())])
    k = max(1, round(ratio * len(candidates)))
    return np.sort(rng.choice(candidates, k, replace=False)).astype(np.int32)


def mask_sets(ids: np.ndarray, special_ids: np.ndarray, ratio: float = MASK_RATIO, seed: int = 0) -> list[np.ndarray]:
    """ceil(1 / ratio) disjoint sets of sorted positions that together cover every non-special
    token once (each about ``ratio`` of them): scoring every token, each with the rest of the
    text as context, in one pass per set."""
    n_sets = math.ceil(1 / ratio - 1e-9)
    candidates = np.flatnonzero(~np.isin(ids, special_ids))
    rng = np.random.default_rng([seed, zlib.crc32(ids.tobytes())])
    order = rng.permutation(candidates)
    return [np.sort(order[j::n_sets]).astype(np.int32) for j in range(n_sets)]


def existing_masks(ids: np.ndarray, mask_id: int) -> np.ndarray:
    """Positions of the [MASK] tokens the text already has (fill-mask)."""
    return np.flatnonzero(ids == mask_id).astype(np.int32)


def _bucket(n: int, lo: int, hi: int | None = None) -> int:
    b = max(lo, 1 << max(0, math.ceil(math.log2(max(n, 1)))))
    return b if hi is None else min(b, hi)


def batches(seqs: list[np.ndarray], masks: list[np.ndarray], mask_id: int, pad_id: int, batch_tokens: int,
            max_len: int):
    """Yield :class:`Batch` es over the given rows, shortest first, masked positions set to [MASK]."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    padded = [_bucket(len(seqs[i]), MIN_LEN, max_len) for i in order]  # non-decreasing
    start = 0
    while start < len(order):
        b = 1  # double the rows while more remain and twice as many still fit in batch_tokens
        while start + b < len(order) and 2 * b * padded[min(start + 2 * b, len(order)) - 1] <= batch_tokens:
            b *= 2
        rows = np.array(order[start:start + b])
        start += len(rows)
        b, s = _bucket(len(rows), 1), padded[start - 1]
        k = _bucket(max(len(masks[i]) for i in rows), 1)
        ids = np.full((b, s), pad_id, np.int32)
        seg = np.zeros((b, s), np.int32)
        mpos, labels, weights = np.zeros((b, k), np.int32), np.zeros((b, k), np.int32), np.zeros((b, k), np.float32)
        for r, i in enumerate(rows):
            seq, m = seqs[i], masks[i]
            ids[r, :len(seq)], seg[r, :len(seq)] = seq, 1
            mpos[r, :len(m)], labels[r, :len(m)], weights[r, :len(m)] = m, seq[m], 1.0
            ids[r, m] = mask_id
        pos = np.broadcast_to(np.arange(s, dtype=np.int32), (b, s)).copy()
        yield Batch(rows, ids, seg, pos, mpos, labels, weights)
