"""Fill-mask, the one implementation: text with ``<mask>`` (or ``[MASK]``) -> token ids, and
per-mask log-probabilities -> the answer transformers' fill-mask pipeline gives. A single model
(``fill_mask``) and routing's mixture of experts (``routing.XELM.fill_mask``) differ only in
where the log-probabilities come from."""

from __future__ import annotations

import re

import numpy as np

from xelm.errors import XelmError

MARKER = r"(?:<mask>|\[MASK\])"


def mask_text(tok, text: str) -> str:
    """``text`` with each marker replaced by the tokenizer's mask token. The spaces around a
    marker go, as in the pipeline on an exported xelm tokenizer (whose ``<mask>`` strips them),
    except the space after it for tokenizers whose mask keeps it (RoBERTa's lstrip-only ``<mask>``)."""
    if not re.search(MARKER, text):
        raise XelmError("the text has no <mask>: write <mask> where the word to fill goes")
    added = tok.added_tokens_decoder.get(tok.mask_token_id)
    keep_right = added is not None and added.lstrip and not added.rstrip
    return re.sub(r"\s*" + MARKER + ("" if keep_right else r"\s*"), lambda _: tok.mask_token, text)


def encode_masked(tok, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(token ids [S] with [CLS] ... [SEP], positions of the masks in them)."""
    ids_S = np.asarray(tok(mask_text(tok, text), truncation=True, max_length=max_len)["input_ids"], np.int32)
    where_K = np.flatnonzero(ids_S == tok.mask_token_id).astype(np.int32)
    if not len(where_K):
        raise XelmError(f"every <mask> lies beyond the first {max_len} tokens: shorten the text")
    return ids_S, where_K


def check_top_k(tok, top_k) -> int:
    vocab = len(tok)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= vocab:
        raise XelmError(f"top-k {top_k!r} is out of range: give a whole number from 1 to {vocab}")
    return top_k


def fillers(tok, ids_S: np.ndarray, where_K: np.ndarray, logp_KxV: np.ndarray, top_k: int):
    """The ``top_k`` likeliest tokens per mask as the pipeline returns them: [{"score", "token",
    "token_str", "sequence"}], one such list per mask when there are several. Special tokens
    are never proposed (the scores stay the model's, as the pipeline's); the sequence leaves
    out [CLS], [SEP] and padding, but keeps the other masks."""
    check_top_k(tok, top_k)
    logp_KxV = np.array(logp_KxV, np.float64)
    logp_KxV[:, tok.all_special_ids] = -np.inf
    hidden = np.array([t for t in tok.all_special_ids if t != tok.mask_token_id])
    out = []
    for k, pos in enumerate(where_K):
        row = []
        for t in np.argsort(-logp_KxV[k], kind="stable")[:top_k]:
            seq = ids_S.copy()
            seq[pos] = t
            row.append({"score": float(np.exp(logp_KxV[k, t])), "token": int(t), "token_str": tok.decode([int(t)]),
                        "sequence": tok.decode(seq[~np.isin(seq, hidden)])})
        out.append(row)
    return out[0] if len(out) == 1 else out


def model_mask_logprobs(model, ids_S: np.ndarray, where_K: np.ndarray) -> np.ndarray:
    """[K, V] one encoder's log p(token | text) at the mask positions."""
    import jax
    import jax.numpy as jnp

    hidden = model(jnp.asarray(ids_S[None]))
    return np.asarray(jax.nn.log_softmax(model.mlm_logits(hidden[0, jnp.asarray(where_K)]), axis=-1))


def fill_mask(model, tok, text: str, top_k: int = 5):
    """``fillers`` for one encoder (an HF checkpoint, an expert, a base)."""
    check_top_k(tok, top_k)
    ids_S, where_K = encode_masked(tok, text, model.cfg.max_len)
    return fillers(tok, ids_S, where_K, model_mask_logprobs(model, ids_S, where_K), top_k)
