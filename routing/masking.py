"""Texts -> token ids and the positions to mask, for scoring and routing.

Masking is deterministic per text: the positions come from a generator seeded with (seed,
crc32 of the text's token ids), so a text gets the same masks whatever batch it lands in, and
every expert (and the dense model) is scored on the same positions. Every chosen position
becomes [MASK] (no 80/10/10 corruption): scoring wants p(token | the rest of the text).

Batching (rows sorted by length, padded to power-of-two buckets) is
``xelm.batches.length_bucketed``, shared with the embeddings.
"""

from __future__ import annotations

import math
import re
import zlib

import numpy as np

from xelm.errors import XelmError

MASK_RATIO = 0.15


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


def passages(tokenizer, texts: list[str], max_len: int) -> tuple[list[str], list[int]]:
    """Each text cut, between words where it has them, into passages that encode to at most
    ``max_len`` tokens with [CLS] and [SEP]: scoring truncates at ``max_len``, and a long
    paragraph would otherwise go partly unscored. Returns the passages and, for each, the index
    of the text it came from (texts that fit are kept whole). Words are counted alone (the
    tokenizer's offsets are no help: a byte-fallback token spans its whole text)."""
    if not texts:
        return [], []
    budget = max_len - 2
    lengths = _token_counts(tokenizer, list(texts))
    out, source = [], []
    for i, (text, n) in enumerate(zip(texts, lengths)):
        if n <= budget:
            out.append(text)
            source.append(i)
            continue
        words = re.findall(r"\S+\s*", text)
        units, sizes = [], []  # the words, and the characters of a word too long to keep whole
        for word, size in zip(words, _token_counts(tokenizer, words)):
            parts = [word] if size <= budget // 2 else list(word)
            units += parts
            sizes += [size] if len(parts) == 1 else _token_counts(tokenizer, parts)
        piece, used = "", 0
        for unit, size in zip(units, sizes):
            if used + size > budget and piece.strip():
                out.append(piece.strip())
                source.append(i)
                piece, used = "", 0
            piece, used = piece + unit, used + size
        if piece.strip():
            out.append(piece.strip())
            source.append(i)
    lengths = [len(ids) for ids in tokenizer(out, add_special_tokens=True, truncation=False)["input_ids"]]
    long = {j for j, n in enumerate(lengths) if n > max_len}
    if long and max_len > 8:  # a passage tokenized longer than its words alone: cut it again, shorter
        again, back = passages(tokenizer, [out[j] for j in sorted(long)], max_len - 4)
        recut = {j: [t for t, b in zip(again, back) if b == k] for k, j in enumerate(sorted(long))}
        out2, source2 = [], []
        for j, (t, src) in enumerate(zip(out, source)):
            for part in recut.get(j, [t]):
                out2.append(part)
                source2.append(src)
        return out2, source2
    return out, source


def _token_counts(tokenizer, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]]


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
