"""Sentence embeddings from an encoder: mean of the final hidden states over a text's tokens.

Texts are truncated to ``max_len`` tokens and batched by length (``length_bucketed``), so a
few compilations serve every batch and short texts do not pay for long ones.
"""

from __future__ import annotations

from functools import partial

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from xelm.batches import MLMBatch, length_bucketed
from xelm.model import Encoder


@partial(jax.jit, static_argnums=0)
def _mean_pool(graphdef, state, batch: MLMBatch):
    return nnx.merge(graphdef, state).mean_pool(batch)


def embed_texts(model: Encoder, tokenizer, texts: list[str], batch_size: int = 32, max_len: int = 128,
                progress: bool = False, desc: str = "embedding") -> np.ndarray:
    """[len(texts), hidden] mean-pooled final hidden states; a batch holds up to
    ``batch_size * max_len`` padded tokens. ``progress``: a bar counting texts."""
    ids = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_len)["input_ids"]
    seqs = [np.asarray(seq, dtype=np.int32) for seq in ids]
    no_masks = [np.zeros(0, np.int32)] * len(seqs)
    graphdef, state = nnx.split(model)
    out = np.zeros((len(texts), model.cfg.hidden), np.float32)
    with tqdm(total=len(texts), desc=desc, unit="text", disable=not progress, leave=False) as bar:
        for rows, batch in length_bucketed(seqs, no_masks, mask_id=tokenizer.pad_token_id,
                                           pad_id=tokenizer.pad_token_id, batch_tokens=batch_size * max_len,
                                           max_len=max_len):
            out[rows] = np.asarray(_mean_pool(graphdef, state, batch))[:len(rows)]
            bar.update(len(rows))
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
