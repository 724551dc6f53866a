"""Masked-LM scores of texts: the ensemble's per-text loss, each expert's log-likelihood (for
posterior routing), and a single model's loss on the same masks (the dense baseline)."""

from __future__ import annotations

import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from routing.ensemble import label_logprobs, mixture_logprobs, sequential, stack_states
from routing.masking import MASK_RATIO, check_texts, choose_masks, encode, mask_sets
from xelm.batches import MIN_LEN, MLMBatch, bucket, length_bucketed

BATCH_TOKENS = 4096  # padded tokens (rows x length) per compiled call
MAX_LEN = 512


def prepare(tokenizer, texts: list[str], max_len: int = MAX_LEN, seed: int = 0, ratio: float = MASK_RATIO):
    """Token ids and deterministic masked positions of each text."""
    seqs = encode(tokenizer, texts, max_len)
    special = np.array(tokenizer.all_special_ids)
    return seqs, [choose_masks(s, special, ratio, seed) for s in seqs]


def _label_logprobs(graphdef, states_E, seqs, masks, tokenizer, batch_tokens, max_len):
    """Yield (rows, batch, [E, B, K] log p_e(true token)) over the texts, shortest first."""
    for rows, b in length_bucketed(seqs, masks, mask_id=tokenizer.mask_token_id, pad_id=tokenizer.pad_token_id,
                                   batch_tokens=batch_tokens, max_len=max_len):
        yield rows, b, np.asarray(label_logprobs(graphdef, sequential(b), states_E, b))


def mixture_nll(graphdef, states_E, w_NxE: np.ndarray, seqs, masks, tokenizer, batch_tokens: int = BATCH_TOKENS,
                max_len: int = MAX_LEN) -> tuple[np.ndarray, np.ndarray]:
    """Per text, the summed -log Σ_e w_e p_e(token) over its masked tokens, and their count."""
    total, count = np.zeros(len(seqs)), np.zeros(len(seqs), np.int64)
    logw_NxE = np.log(np.maximum(w_NxE, 1e-30))
    for rows, b, lp_ExBxK in _label_logprobs(graphdef, states_E, seqs, masks, tokenizer, batch_tokens, max_len):
        logw_BxE = np.zeros((lp_ExBxK.shape[1], lp_ExBxK.shape[0]))
        logw_BxE[:len(rows)] = logw_NxE[rows]
        mix_BxK = np.asarray(mixture_logprobs(lp_ExBxK, logw_BxE))
        total[rows] = -(mix_BxK * b.mask_weights_BxK).sum(1)[:len(rows)]
        count[rows] = b.mask_weights_BxK.sum(1)[:len(rows)]
    return total, count


def label_table(graphdef, states_E, seqs, masks, tokenizer, batch_tokens: int = BATCH_TOKENS,
                max_len: int = MAX_LEN) -> tuple[np.ndarray, np.ndarray]:
    """([E, N, K] each expert's log-probability of each text's masked tokens, [N, K] 1 on real
    masks); K is the most masks any text has."""
    k_max = max([len(m) for m in masks] + [1])
    lp_ExNxK, w_NxK = None, np.zeros((len(seqs), k_max), np.float32)
    for rows, b, lp_ExBxK in _label_logprobs(graphdef, states_E, seqs, masks, tokenizer, batch_tokens, max_len):
        if lp_ExNxK is None:
            lp_ExNxK = np.zeros((lp_ExBxK.shape[0], len(seqs), k_max), np.float32)
        n, k = len(rows), min(lp_ExBxK.shape[2], k_max)
        lp_ExNxK[:, rows, :k] = lp_ExBxK[:, :n, :k]
        w_NxK[rows, :k] = b.mask_weights_BxK[:n, :k]
    return lp_ExNxK, w_NxK


def packed_rows(lengths: list[int], row_len: int) -> list[list[int]]:
    """Texts (by index) packed into rows of ``row_len`` tokens, first fit by decreasing length:
    scoring every token runs each model over a text once per mask set, so padding a text to
    its power-of-two length bucket (a quarter of the tokens of the UDHR's paragraphs) costs on
    every pass."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r, f in enumerate(free) if f >= lengths[i]), None)
        if r is None:
            rows.append([])
            free.append(row_len)
            r = len(rows) - 1
        rows[r].append(i)
        free[r] -= lengths[i]
    return rows


def packed_batches(seqs, masks, rows: list[list[int]], row_len: int, batch_rows: int, mask_id: int, pad_id: int):
    """Yield (n, text_BxK, slot_BxK, batch) over ``rows`` of texts (n texts in the batch), each
    text its own segment with positions from 0 (a model sees the text alone, as unpacked); slot
    (b, k) holds mask ``slot_BxK[b, k]`` of text ``text_BxK[b, k]`` (-1: a padding slot). One K
    (the most masks of a row, to a multiple of 8) for all batches: few shapes to compile."""
    k = max(8, -(-max(sum(len(masks[i]) for i in row) for row in rows) // 8) * 8)
    for start in range(0, len(rows), batch_rows):
        chunk = rows[start:start + batch_rows]
        b = batch_rows if len(chunk) == batch_rows else bucket(len(chunk))
        ids, seg, pos = (np.zeros((b, row_len), np.int32) for _ in range(3))
        ids[:] = pad_id
        mpos, labels, weights = np.zeros((b, k), np.int32), np.zeros((b, k), np.int32), np.zeros((b, k), np.float32)
        text, slot = np.full((b, k), -1), np.zeros((b, k), np.int64)
        for r, members in enumerate(chunk):
            at = j = 0
            for segment, i in enumerate(members, 1):
                seq, m = seqs[i], masks[i]
                ids[r, at:at + len(seq)], seg[r, at:at + len(seq)] = seq, segment
                pos[r, at:at + len(seq)] = np.arange(len(seq))
                mpos[r, j:j + len(m)], labels[r, j:j + len(m)], weights[r, j:j + len(m)] = at + m, seq[m], 1.0
                ids[r, at + m] = mask_id
                text[r, j:j + len(m)], slot[r, j:j + len(m)] = i, np.arange(len(m))
                at, j = at + len(seq), j + len(m)
        yield sum(map(len, chunk)), text, slot, MLMBatch(ids, seg, pos, mpos, labels, weights)


def _packed_table(graphdef, states_E, seqs, masks, rows, row_len: int, batch_rows: int, tokenizer, bar):
    """:func:`label_table` (real slots only) over texts packed into ``rows``; ``bar`` advances
    by the texts done."""
    k_max = max([len(m) for m in masks] + [1])
    lp_ExNxK, w_NxK = None, np.zeros((len(seqs), k_max), np.float32)
    for n_texts, text, slot, b in packed_batches(seqs, masks, rows, row_len, batch_rows, tokenizer.mask_token_id,
                                                 tokenizer.pad_token_id):
        lp_ExBxK = np.asarray(label_logprobs(graphdef, sequential(b), states_E, b))
        if lp_ExNxK is None:
            lp_ExNxK = np.zeros((lp_ExBxK.shape[0], len(seqs), k_max), np.float32)
        real = text >= 0
        lp_ExNxK[:, text[real], slot[real]] = lp_ExBxK[:, real]
        w_NxK[text[real], slot[real]] = 1.0
        bar.update(n_texts)
    return lp_ExNxK, w_NxK


def every_token_table(graphdef, states_E, tokenizer, texts: list[str], ratio: float, seed: int = 0,
                      max_len: int = MAX_LEN, batch_tokens: int = BATCH_TOKENS, progress: bool = False,
                      desc: str = "scoring"):
    """Each expert's log-probability of *every* non-special token of each text, one pass per
    disjoint mask set (:func:`routing.masking.mask_sets`): ([E, N, K], [N, K] 1 on real tokens,
    [K] the mask set of each column). Every model given gets the same sets. Texts are packed
    into rows (:func:`packed_rows`) of the longest one's length bucket. ``progress``: a bar
    counting texts over all passes."""
    seqs = encode(tokenizer, texts, max_len)
    special = np.array(tokenizer.all_special_ids)
    sets = [mask_sets(s, special, ratio, seed) for s in seqs]
    row_len = bucket(max(len(s) for s in seqs), MIN_LEN, max_len)
    rows = packed_rows([len(s) for s in seqs], row_len)
    with tqdm(total=len(sets[0]) * len(seqs), desc=desc, unit="text", disable=not progress, dynamic_ncols=True,
              leave=False) as bar:
        tables = [_packed_table(graphdef, states_E, seqs, [ms[j] for ms in sets], rows, row_len,
                                max(1, batch_tokens // row_len), tokenizer, bar) for j in range(len(sets[0]))]
    set_K = np.concatenate([np.full(t[1].shape[1], j) for j, t in enumerate(tables)])
    return (np.concatenate([t[0] for t in tables], axis=2), np.concatenate([t[1] for t in tables], axis=1),
            set_K)


def mixture_loss(lp_ExNxK: np.ndarray, w_NxK: np.ndarray, weights_NxE: np.ndarray) -> np.ndarray:
    """Per-text loss of the mixture Σ_e w_e p_e(token) from a :func:`label_table` (numpy: any
    number of routings, no model run); the same maths as ``mixture_nll``, so the same numbers."""
    mix_NxK = np.asarray(mixture_logprobs(lp_ExNxK, np.log(np.maximum(weights_NxE, 1e-30))), np.float64)
    return per_token(-(mix_NxK * w_NxK).sum(1), w_NxK.sum(1))


def score_model(model, tokenizer, texts, batch_tokens: int = BATCH_TOKENS, max_len: int = MAX_LEN,
                seed: int = 0) -> np.ndarray:
    """Per-text mean masked-LM loss of one model (e.g. the dense baseline) on the masks
    ``XELM.score`` uses, so the numbers compare."""
    texts = check_texts(texts)
    seqs, masks = prepare(tokenizer, texts, max_len, seed)
    graphdef, state = nnx.split(model)
    total, count = mixture_nll(graphdef, stack_states([state]), np.ones((len(texts), 1)), seqs, masks,
                               tokenizer, batch_tokens, max_len)
    return per_token(total, count)


def per_token(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Mean loss per masked token; NaN for a text with nothing to mask."""
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


# ------------------------------------------------------------- fixed shapes (serving)
ROW_BUCKETS = (1, 4, 16, 64)  # rows per compiled call: few shapes to compile
CALL_TOKENS = 2048  # padded tokens (rows x length) per compiled call, at most


def length_buckets(max_len: int) -> list[int]:
    """Every padded length a text can get: powers of two from ``MIN_LEN``, capped at ``max_len``."""
    out, s = [], MIN_LEN
    while True:
        out.append(min(s, max_len))
        if s >= max_len:
            return sorted(set(out))
        s *= 2


def row_buckets(length: int, call_tokens: int = CALL_TOKENS) -> list[int]:
    return [b for b in ROW_BUCKETS if b * length <= call_tokens] or [1]


def mask_slots(length: int, ratio: float = MASK_RATIO) -> int:
    """Mask slots K of a row padded to ``length``: enough for any text of that length
    (:func:`routing.masking.choose_masks` masks round(ratio x its non-special tokens)), and no
    more: the head runs on every slot."""
    return max(1, round(ratio * length))


def shape_grid(max_len: int, call_tokens: int = CALL_TOKENS) -> list[tuple[int, int]]:
    """Every (rows, length) :func:`fixed_shape_batches` makes: what a server compiles up front."""
    return [(b, s) for s in length_buckets(max_len) for b in row_buckets(s, call_tokens)]


def _chunks(n: int, sizes: list[int]) -> list[tuple[int, int]]:
    """(real rows, padded rows) covering ``n`` rows: pad up to the next size when at least 3/4
    of its rows are real, else take the largest size that fits and go on. On a CPU a padding
    row costs as much as a real one, more than another call does."""
    out = []
    while n > 0:
        up = next((b for b in sizes if b >= n), None)
        if up is not None and 4 * n >= 3 * up:
            out.append((n, up))
            break
        take = max(b for b in sizes if b <= n)
        out.append((take, take))
        n -= take
    return out


def fixed_shape_batches(seqs: list[np.ndarray], masks: list[np.ndarray], *, mask_id: int, pad_id: int,
                        max_len: int, ratio: float | None = MASK_RATIO, call_tokens: int = CALL_TOKENS):
    """Yield (rows, batch) like ``xelm.batches.length_bucketed``, but every batch has a shape of
    :func:`shape_grid` (and K = :func:`mask_slots` of its length, or the next power of two of
    the most masks when ``ratio`` is None): a server compiles each shape once, at start. A text
    is padded to its own length bucket whatever it is batched with."""
    by_len: dict[int, list[int]] = {}
    for i, seq in enumerate(seqs):
        by_len.setdefault(bucket(len(seq), MIN_LEN, max_len), []).append(i)
    for s in sorted(by_len):
        idx = by_len[s]
        start = 0
        for n, b in _chunks(len(idx), row_buckets(s, call_tokens)):
            rows = np.array(idx[start:start + n])
            start += n
            most = max(len(masks[i]) for i in rows)
            k = bucket(most) if ratio is None else max(mask_slots(s, ratio), most)
            yield rows, padded_batch([seqs[i] for i in rows], [masks[i] for i in rows], b, s, k, mask_id, pad_id)


def padded_batch(seqs, masks, b: int, s: int, k: int, mask_id: int, pad_id: int) -> MLMBatch:
    """One [b, s] batch of ``seqs`` (fewer rows than b: padding rows), ``masks`` set to [MASK]."""
    ids = np.full((b, s), pad_id, np.int32)
    seg = np.zeros((b, s), np.int32)
    mpos, labels, weights = np.zeros((b, k), np.int32), np.zeros((b, k), np.int32), np.zeros((b, k), np.float32)
    for r, (seq, m) in enumerate(zip(seqs, masks)):
        ids[r, :len(seq)], seg[r, :len(seq)] = seq, 1
        mpos[r, :len(m)], labels[r, :len(m)], weights[r, :len(m)] = m, seq[m], 1.0
        ids[r, m] = mask_id
    pos = np.broadcast_to(np.arange(s, dtype=np.int32), (b, s)).copy()
    return MLMBatch(ids, seg, pos, mpos, labels, weights)
