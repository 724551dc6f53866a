"""Masked-LM scores of texts: the ensemble's per-text loss, each expert's log-likelihood (for
posterior routing), and a single model's loss on the same masks (the dense baseline)."""

from __future__ import annotations

import numpy as np
from flax import nnx

from routing.ensemble import label_logprobs, mixture_logprobs, sequential, stack_states
from routing.masking import MASK_RATIO, check_texts, choose_masks, encode, mask_sets
from xelm.batches import length_bucketed

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


def every_token_table(graphdef, states_E, tokenizer, texts: list[str], ratio: float, seed: int = 0,
                      max_len: int = MAX_LEN, batch_tokens: int = BATCH_TOKENS):
    """Each expert's log-probability of *every* non-special token of each text, one pass per
    disjoint mask set (:func:`routing.masking.mask_sets`): ([E, N, K], [N, K] 1 on real tokens,
    [K] the mask set of each column). Every model given gets the same sets."""
    seqs = encode(tokenizer, texts, max_len)
    special = np.array(tokenizer.all_special_ids)
    sets = [mask_sets(s, special, ratio, seed) for s in seqs]
    tables = [label_table(graphdef, states_E, seqs, [ms[j] for ms in sets], tokenizer, batch_tokens, max_len)
              for j in range(len(sets[0]))]
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
