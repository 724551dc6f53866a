"""Sentence embeddings from an encoder: mean of the final hidden states over a text's tokens.

Texts are truncated to ``max_len`` tokens, sorted by length and padded to power-of-two
lengths (at least 16), so a few compilations serve every batch and short texts do not pay for
long ones.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xelm.model import Encoder


def padded_batches(tokenizer, texts: list[str], batch_size: int, max_len: int):
    """Yield (ids, segment_ids, positions, rows): fixed-shape int32 arrays, shortest texts first;
    ``rows`` are the batch's real rows' indices in ``texts``."""
    ids = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_len)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        length = min(max_len, max(16, 1 << (max(len(ids[i]) for i in rows) - 1).bit_length()))
        arr = np.full((batch_size, length), tokenizer.pad_token_id, np.int32)
        seg = np.zeros((batch_size, length), np.int32)
        for r, i in enumerate(rows):
            arr[r, :len(ids[i])] = ids[i]
            seg[r, :len(ids[i])] = 1
        pos = np.broadcast_to(np.arange(length, dtype=np.int32), arr.shape)
        yield arr, seg, pos, rows


@partial(jax.jit, static_argnums=0)
def _mean_hidden(graphdef, state, ids, seg, pos):
    h_BxSxD = nnx.merge(graphdef, state)(ids, seg, pos).astype(jnp.float32)
    w_BxS = (seg > 0).astype(jnp.float32)
    return (h_BxSxD * w_BxS[..., None]).sum(1) / jnp.maximum(w_BxS.sum(1, keepdims=True), 1.0)


def embed_texts(model: Encoder, tokenizer, texts: list[str], batch_size: int = 32, max_len: int = 128) -> np.ndarray:
    """[len(texts), hidden] mean-pooled final hidden states."""
    graphdef, state = nnx.split(model)
    out = np.zeros((len(texts), model.cfg.hidden), np.float32)
    for ids, seg, pos, rows in padded_batches(tokenizer, texts, batch_size, max_len):
        out[rows] = np.asarray(_mean_hidden(graphdef, state, ids, seg, pos))[:len(rows)]
    return out


def language_embeddings(model: Encoder, tokenizer, texts_by_lang: dict[str, list[str]], **kw) -> dict[str, np.ndarray]:
    """Per language, the mean of its texts' embeddings (the model's view of the language)."""
    langs = sorted(texts_by_lang)
    flat = [t for lang in langs for t in texts_by_lang[lang]]
    vecs = embed_texts(model, tokenizer, flat, **kw)
    out, i = {}, 0
    for lang in langs:
        n = len(texts_by_lang[lang])
        out[lang] = vecs[i:i + n].mean(0)
        i += n
    return out
