"""The encoder (Flax NNX): ModernBERT by default, BERT / XLM-R by config, one module with options.

Shapes in names: B batch, S sequence, D hidden, N heads, H head size, K masked positions per row,
M masked positions of the whole batch (flattened), V vocab.
Packed rows carry ``segment_ids`` (0 = padding) and per-segment ``positions``; attention never
crosses a segment, and a local layer also stays inside its window.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from flax import nnx

from xelm.batches import MLMBatch
from xelm.config import ModelConfig


def compute_dtype(cfg: ModelConfig):
    if cfg.dtype == "auto":
        return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    return jnp.dtype(cfg.dtype)


def _gelu(x):
    return jax.nn.gelu(x, approximate=False)


def _gelu_tanh(x):
    return jax.nn.gelu(x, approximate=True)


def _activation(name: str):
    # Module-level functions, not lambdas made per model: an activation is a static attribute of
    # the graph definition, and equal graph definitions let every model of one shape share a
    # compiled function (jit caches on them).
    return {"gelu": _gelu, "gelu_tanh": _gelu_tanh}[name]


def _materialised_transpose(x_2d):
    """``x.T`` as a real copy on a CPU: XLA folds a bare transpose into the dot that reads it, and
    XLA:CPU runs a dot whose first operand contracts on its leading axis in Eigen, at half the
    speed of YNNPACK on the plain layout (benchmarks/README.md). Elsewhere the plain transpose."""
    return jax.lax.optimization_barrier(x_2d.T) if jax.default_backend() == "cpu" else x_2d.T


@jax.custom_vjp
def _matmul(x_NxD, w_DxF):
    return x_NxD @ w_DxF


def _matmul_fwd(x_NxD, w_DxF):
    return x_NxD @ w_DxF, (x_NxD, w_DxF)


def _matmul_bwd(res, g_NxF):
    x_NxD, w_DxF = res
    return g_NxF @ w_DxF.T, _materialised_transpose(x_NxD) @ g_NxF


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def linear_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kwargs):
    """``nnx.Linear``'s ``dot_general``. On a CPU, a layer at least twice as wide out as in (q/k/v,
    the MLP's input) takes its weight gradient from :func:`_materialised_transpose` (x) @ dy. The
    copy of x pays for itself only when the output is wide: with these layers and the head, the
    reference train step ran 1.12x faster; the narrow layers added made it 0.99x of that.
    Everything else goes to ``lax.dot_general``."""
    (lhs_c, rhs_c), batch = dimension_numbers
    if (jax.default_backend() == "cpu" and rhs.ndim == 2 and rhs.shape[1] >= 2 * rhs.shape[0]
            and lhs_c == (lhs.ndim - 1,) and rhs_c == (0,) and batch == ((), ()) and precision is None
            and preferred_element_type in (None, lhs.dtype) and lhs.dtype == rhs.dtype
            and kwargs.get("out_sharding") is None):
        return _matmul(lhs.reshape(-1, lhs.shape[-1]), rhs).reshape(*lhs.shape[:-1], rhs.shape[1])
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type, **kwargs)


def rotary(positions_BxS, head_dim: int, theta: float):
    """(cos, sin) [B, S, 1, H] of the rotary embedding (rotate-half convention, as HF ModernBERT /
    GPT-NeoX), computed once per forward pass and theta: left inside each layer's fused pass,
    XLA:CPU recomputed them per element of q and k, at 10x the cost of the rotation itself."""
    inv_freq_F = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles_BxSxF = positions_BxS[..., None].astype(jnp.float32) * inv_freq_F
    angles_BxSx1xH = jnp.concatenate([angles_BxSxF] * 2, -1)[:, :, None, :]
    return jnp.cos(angles_BxSx1xH), jnp.sin(angles_BxSx1xH)


def rope(x_BxSxNxH, cos_sin):
    """``x`` rotated by :func:`rotary`'s angles."""
    cos, sin = cos_sin
    x1, x2 = jnp.split(x_BxSxNxH.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x_BxSxNxH * cos + rotated * sin).astype(x_BxSxNxH.dtype)


def attend(q_BxSxNxH, k_BxSxNxH, v_BxSxNxH, mask_Bx1xSxS):
    """Softmax attention with a boolean mask: cuDNN's fused kernel on a GPU in half precision
    (chosen at trace time, by backend and dtype), else plain einsums (faster than
    ``jax.nn.dot_product_attention`` on CPU). ``XELM_ATTENTION=xla`` keeps the einsums on a GPU
    too: an escape hatch for a cuDNN that refuses a shape at compile time, and an A/B."""
    if (jax.default_backend() == "gpu" and q_BxSxNxH.dtype in (jnp.bfloat16, jnp.float16)
            and os.environ.get("XELM_ATTENTION", "auto") != "xla"):
        try:
            return jax.nn.dot_product_attention(q_BxSxNxH, k_BxSxNxH, v_BxSxNxH, mask=mask_Bx1xSxS,
                                                implementation="cudnn")
        except (ValueError, NotImplementedError):  # a shape or mask cuDNN does not take
            pass
    scale = q_BxSxNxH.shape[-1] ** -0.5
    s_BxNxSxS = jnp.einsum("bqnh,bknh->bnqk", q_BxSxNxH * scale, k_BxSxNxH).astype(jnp.float32)
    s_BxNxSxS = jnp.where(mask_Bx1xSxS, s_BxNxSxS, jnp.finfo(jnp.float32).min)
    p_BxNxSxS = jax.nn.softmax(s_BxNxSxS, axis=-1).astype(v_BxSxNxH.dtype)
    # Heads-first for the second product: XLA:CPU ran "bnqk,bknh->bqnh" at a quarter of the speed
    # of the first einsum (same FLOPs); with v and the output transposed around it, attention's
    # forward + backward is ~15% faster and bitwise equal (benchmarks/README.md).
    o_BxNxSxH = jnp.einsum("bnqk,bnkh->bnqh", p_BxNxSxS, v_BxSxNxH.transpose(0, 2, 1, 3))
    return o_BxNxSxH.transpose(0, 2, 1, 3)


def rows(x_BxSx_, index_BxK):
    """``x[b, index[b, k]]`` for every b, k: [B, K, ...] from [B, S, ...]."""
    index = index_BxK.reshape(index_BxK.shape + (1,) * (x_BxSx_.ndim - 2))
    return jnp.take_along_axis(x_BxSx_, index, axis=1)


def attention_mask(segment_ids_BxS, positions_BxS, window: int | None):
    """[B, 1, S, S] boolean: same segment and (for local layers) within ``window // 2``."""
    same_BxSxS = segment_ids_BxS[:, :, None] == segment_ids_BxS[:, None, :]
    if window:
        dist = jnp.abs(positions_BxS[:, :, None] - positions_BxS[:, None, :])
        same_BxSxS &= dist <= window // 2
    return same_BxSxS[:, None]


@jax.custom_vjp
def tied_head_xent(h_MxD, table_VxD, bias_V, labels_M):
    """Per row: the cross-entropy of ``h @ table.T + bias`` against ``labels`` [N], and 1.0 where
    the label is the top token. Its gradient is (softmax - onehot) in one fused pass (autodiff of
    log_softmax + take_along_axis stores the softmax and builds a [N, V] one-hot instead), and
    the bias rides in the matmuls as an extra column (no separate pass over [N, V] for it)."""
    nll_M, correct_M, _, _ = _xent(h_MxD, table_VxD, bias_V, labels_M)
    return nll_M, correct_M


def _with_column(x_NxD, col_N):
    """``x`` with ``col`` appended, then zeros to a multiple of 8 columns: the head's matmuls carry
    the bias as a column, and cuBLAS runs K = D + 1 at a third of the speed of K = D or D + 8
    (H200, bf16)."""
    n, d = x_NxD.shape
    return jnp.concatenate([x_NxD, col_N[:, None].astype(x_NxD.dtype),
                            jnp.zeros((n, 7 - d % 8), x_NxD.dtype)], axis=1)


def _with_ones(x_MxD):
    return _with_column(x_MxD, jnp.ones((x_MxD.shape[0],), x_MxD.dtype))


def _xent(h_MxD, table_VxD, bias_V, labels_M):
    table_Vx1D = _with_column(table_VxD, bias_V)
    logits_MxV = jnp.dot(_with_ones(h_MxD), table_Vx1D.T, preferred_element_type=jnp.float32)
    max_M = logits_MxV.max(-1)
    lse_M = max_M + jnp.log(jnp.exp(logits_MxV - max_M[:, None]).sum(-1))
    label_logit_M = jnp.take_along_axis(logits_MxV, labels_M[:, None], axis=-1)[:, 0]
    return lse_M - label_logit_M, (label_logit_M >= max_M).astype(jnp.float32), logits_MxV, lse_M


def _xent_fwd(h_MxD, table_VxD, bias_V, labels_M):
    nll_M, correct_M, logits_MxV, lse_M = _xent(h_MxD, table_VxD, bias_V, labels_M)
    return (nll_M, correct_M), (h_MxD, table_VxD, logits_MxV, lse_M, labels_M)


def _xent_bwd(res, g):
    h_MxD, table_VxD, logits_MxV, lse_M, labels_M = res
    onehot_MxV = labels_M[:, None] == jnp.arange(logits_MxV.shape[1])[None, :]
    dlogits_MxV = ((jnp.exp(logits_MxV - lse_M[:, None]) - onehot_MxV) * g[0][:, None]).astype(h_MxD.dtype)
    dh_MxD = jnp.dot(dlogits_MxV, table_VxD, preferred_element_type=jnp.float32).astype(h_MxD.dtype)
    # h.T @ dlogits with h.T a real copy, the [D+8, V] product transposed after: the small copies
    # cost less than copying the [M, V] dlogits, or than Eigen's GEMM on the folded transpose.
    dtable_1DxV = jnp.dot(_materialised_transpose(_with_ones(h_MxD)), dlogits_MxV,
                          preferred_element_type=jnp.float32)
    d = table_VxD.shape[1]
    return dh_MxD, dtable_1DxV[:d].T.astype(table_VxD.dtype), dtable_1DxV[d], None


tied_head_xent.defvjp(_xent_fwd, _xent_bwd)


def vocab_chunks(vocab: int, at_least: int = 512) -> int:
    """How many vocabulary chunks :meth:`Encoder.masked_label_logprobs` takes: on a CPU, the most
    of 16, 8, 4, 2 that divide ``vocab`` into chunks of ``at_least`` entries (a chunk's logits
    then stay in cache); elsewhere one."""
    if jax.default_backend() != "cpu":
        return 1
    return next((c for c in (16, 8, 4, 2) if vocab % c == 0 and vocab // c >= at_least), 1)


def _lookup(embed: nnx.Embed, ids):
    """Rows of the f32 table, cast after the gather, so the gradient's scatter-add runs in f32:
    ``nnx.Embed`` casts the whole table first, and its bf16 scatter-add made the backward pass
    2.6x slower on an H200 (benchmarks/README.md)."""
    table = embed.embedding[...]
    return jnp.take(table, ids, axis=0).astype(embed.dtype or table.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        d = cfg.hidden
        self.cfg = cfg
        self.theta = (cfg.rope_theta if cfg.is_global(layer) else cfg.rope_theta_local) if cfg.rope else None
        self.qkv = _dense(cfg, d, 3 * d, rngs)
        self.out = _dense(cfg, d, d, rngs)

    def __call__(self, x_BxSxD, mask_Bx1xSxS, rotations: dict, queries_BxQ=None):
        """``rotations``: theta -> :func:`rotary` of the batch's positions (empty without rope).
        ``queries``: the positions whose outputs are wanted ([B, Q, D] back; default all)."""
        cfg = self.cfg
        b, s, d = x_BxSxD.shape
        qkv = self.qkv(x_BxSxD).reshape(b, s, 3, cfg.heads, d // cfg.heads)
        q_BxSxNxH, k_BxSxNxH, v_BxSxNxH = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.theta is not None:
            q_BxSxNxH, k_BxSxNxH = rope(q_BxSxNxH, rotations[self.theta]), rope(k_BxSxNxH, rotations[self.theta])
        q_BxQxNxH, mask_Bx1xQxS = q_BxSxNxH, mask_Bx1xSxS
        if queries_BxQ is not None:
            q_BxQxNxH = rows(q_BxSxNxH, queries_BxQ)
            mask_Bx1xQxS = jnp.take_along_axis(mask_Bx1xSxS, queries_BxQ[:, None, :, None], axis=2)
        o_BxQxNxH = attend(q_BxQxNxH, k_BxSxNxH, v_BxSxNxH, mask_Bx1xQxS)
        return self.out(o_BxQxNxH.reshape(b, o_BxQxNxH.shape[1], cfg.hidden))


class MLP(nnx.Module):
    """GeGLU (ModernBERT: act(input) * gate) or a plain GELU MLP (BERT)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        width = 2 * cfg.ffn if cfg.gated_mlp else cfg.ffn
        self.gated, self.act = cfg.gated_mlp, _activation(cfg.activation)
        self.wi = _dense(cfg, cfg.hidden, width, rngs)
        self.wo = _dense(cfg, cfg.ffn, cfg.hidden, rngs)

    def __call__(self, x_BxSxD):
        h = self.wi(x_BxSxD)
        if self.gated:
            inp, gate = jnp.split(h, 2, axis=-1)
            return self.wo(self.act(inp) * gate)
        return self.wo(self.act(h))


def _dense(cfg: ModelConfig, d_in: int, d_out: int, rngs: nnx.Rngs, use_bias: bool | None = None) -> nnx.Linear:
    """Every dense layer of the encoder: its init, compute dtype and :func:`linear_dot_general`."""
    return nnx.Linear(d_in, d_out, use_bias=cfg.bias if use_bias is None else use_bias,
                      kernel_init=nnx.initializers.normal(cfg.init_std), dtype=compute_dtype(cfg),
                      dot_general=linear_dot_general, rngs=rngs)


def _norm(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(cfg.hidden, epsilon=cfg.norm_eps, use_bias=cfg.bias,
                         dtype=compute_dtype(cfg), rngs=rngs)


class Block(nnx.Module):
    """Pre-norm (ModernBERT; no norm before layer 0's attention) or post-norm (BERT)."""

    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        self.pre_norm = cfg.pre_norm
        self.window = None if cfg.is_global(layer) else cfg.local_window
        self.attn = Attention(cfg, layer, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)
        self.attn_norm = _norm(cfg, rngs) if (layer > 0 or not cfg.pre_norm) else None
        self.mlp_norm = _norm(cfg, rngs)

    def __call__(self, x_BxSxD, masks, rotations, queries_BxQ=None):
        """[B, S, D], or [B, Q, D] at ``queries`` only: every token is still attended to, but
        the residual stream and the MLP run on those rows alone."""
        mask = masks[self.window]
        x_BxQxD = x_BxSxD if queries_BxQ is None else rows(x_BxSxD, queries_BxQ)
        if self.pre_norm:
            h = x_BxSxD if self.attn_norm is None else self.attn_norm(x_BxSxD)
            x_BxQxD = x_BxQxD + self.attn(h, mask, rotations, queries_BxQ)
            return x_BxQxD + self.mlp(self.mlp_norm(x_BxQxD))
        x_BxQxD = self.attn_norm(x_BxQxD + self.attn(x_BxSxD, mask, rotations, queries_BxQ))
        return self.mlp_norm(x_BxQxD + self.mlp(x_BxQxD))


class Encoder(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        init, dt = nnx.initializers.normal(cfg.init_std), compute_dtype(cfg)
        self.cfg = cfg
        self.embed = nnx.Embed(cfg.vocab_size, cfg.hidden, embedding_init=init, dtype=dt, rngs=rngs)
        self.pos_embed = (None if cfg.rope else nnx.Embed(
            cfg.max_len + cfg.position_offset, cfg.hidden, embedding_init=init, dtype=dt, rngs=rngs))
        self.type_embed = (nnx.Embed(cfg.type_vocab_size, cfg.hidden, embedding_init=init, dtype=dt, rngs=rngs)
                           if cfg.type_vocab_size else None)
        self.embed_norm = _norm(cfg, rngs)
        self.layers = nnx.List([Block(cfg, i, rngs=rngs) for i in range(cfg.layers)])
        self.final_norm = _norm(cfg, rngs) if cfg.pre_norm else None
        # MLM head: dense -> act -> norm -> decoder tied to the token embeddings.
        self.head_dense = _dense(cfg, cfg.hidden, cfg.hidden, rngs, use_bias=cfg.head_bias or cfg.bias)
        self.head_norm = _norm(cfg, rngs)
        self.decoder_bias = nnx.Param(jnp.zeros((cfg.vocab_size,))) if cfg.decoder_bias else None

    def __call__(self, input_ids_BxS, segment_ids_BxS=None, positions_BxS=None, type_ids_BxS=None,
                 queries_BxQ=None):
        """Final hidden states [B, S, D]. Without segment ids, every token is one segment
        except padding (``pad_token_id``), and positions count from 0. With ``queries``, the
        states at those positions only, [B, Q, D]: the last layer then runs its MLP, residual
        and attention queries on those rows alone (an MLM head reads nothing else)."""
        cfg = self.cfg
        if segment_ids_BxS is None:
            segment_ids_BxS = (input_ids_BxS != cfg.pad_token_id).astype(jnp.int32)
        if positions_BxS is None:
            positions_BxS = jnp.broadcast_to(jnp.arange(input_ids_BxS.shape[1]), input_ids_BxS.shape)
        x_BxSxD = _lookup(self.embed, input_ids_BxS)
        if self.pos_embed is not None:
            x_BxSxD = x_BxSxD + _lookup(self.pos_embed, positions_BxS + cfg.position_offset)
        if self.type_embed is not None:
            tt = jnp.zeros_like(input_ids_BxS) if type_ids_BxS is None else type_ids_BxS
            x_BxSxD = x_BxSxD + _lookup(self.type_embed, tt)
        x_BxSxD = self.embed_norm(x_BxSxD)
        windows = {layer.window for layer in self.layers}
        masks = {w: attention_mask(segment_ids_BxS, positions_BxS, w) for w in windows}
        thetas = {layer.attn.theta for layer in self.layers} - {None}
        rotations = {t: rotary(positions_BxS, cfg.hidden // cfg.heads, t) for t in thetas}
        for layer in self.layers[:-1]:
            x_BxSxD = layer(x_BxSxD, masks, rotations)
        x_BxQxD = self.layers[-1](x_BxSxD, masks, rotations, queries_BxQ)
        return x_BxQxD if self.final_norm is None else self.final_norm(x_BxQxD)

    def head_transform(self, hidden_BxKxD):
        """The MLM head before its tied decoder: dense -> activation -> norm."""
        return self.head_norm(_activation(self.cfg.activation)(self.head_dense(hidden_BxKxD)))

    def mlm_logits(self, hidden_BxKxD):
        """Vocabulary logits for the given hidden states (call on masked positions only)."""
        h = self.head_transform(hidden_BxKxD)
        logits = self.embed.attend(h)
        if self.decoder_bias is not None:
            logits = logits + self.decoder_bias[...]
        return logits.astype(jnp.float32)

    def masked_hidden(self, batch: MLMBatch):
        """[B, K, D] final hidden states at the batch's masked positions."""
        return self(batch.input_ids_BxS, batch.segment_ids_BxS, batch.positions_BxS,
                    queries_BxQ=batch.mask_positions_BxK)

    def masked_logits(self, batch: MLMBatch):
        """[B, K, V] logits at the batch's masked positions: the head runs on those states only."""
        return self.mlm_logits(self.masked_hidden(batch))

    def masked_label_logprobs(self, batch: MLMBatch):
        """[B, K] log p(label) at the masked positions: ``log_softmax(masked_logits)`` at the
        labels, to ~1e-6, with the logsumexp taken over vocabulary chunks (:func:`vocab_chunks`)
        so the [B·K, V] logits never exist at once: on a CPU, writing and re-reading them cost
        half as much again as the head's GEMM (benchmarks/README.md). G: the chunks."""
        h = self.head_transform(self.masked_hidden(batch))
        b, k, d = h.shape
        v = self.cfg.vocab_size
        chunks = vocab_chunks(v)
        bias_V = jnp.zeros((v,), jnp.float32) if self.decoder_bias is None else self.decoder_bias[...]
        h_MxD, table_VxD = self.embed.promote_dtype((h.reshape(b * k, d), self.embed.embedding[...]),
                                                    dtype=self.embed.dtype)
        labels_M = batch.mask_labels_BxK.reshape(b * k)

        def chunk(args):
            first, table_DxC, bias_C = args
            logits_MxC = (jnp.dot(h_MxD, table_DxC) + bias_C).astype(jnp.float32)
            max_M = logits_MxC.max(-1)
            inside_M = (labels_M >= first) & (labels_M < first + v // chunks)
            label_M = jnp.take_along_axis(logits_MxC, jnp.where(inside_M, labels_M - first, 0)[:, None], -1)[:, 0]
            return max_M, jnp.exp(logits_MxC - max_M[:, None]).sum(-1), jnp.where(inside_M, label_M, 0.0)

        max_GxM, sum_GxM, label_GxM = jax.lax.map(chunk, (
            jnp.arange(chunks) * (v // chunks), table_VxD.reshape(chunks, v // chunks, d).transpose(0, 2, 1),
            bias_V.reshape(chunks, v // chunks)))
        max_M = max_GxM.max(0)
        lse_M = max_M + jnp.log((sum_GxM * jnp.exp(max_GxM - max_M)).sum(0))
        return (label_GxM.sum(0) - lse_M).reshape(b, k)

    def masked_xent(self, batch: MLMBatch):
        """([B, K] cross-entropy, [B, K] 1.0 where the top token is the label) at the masked
        positions, through :func:`tied_head_xent` (what training differentiates)."""
        h_BxKxD = self.head_transform(self.masked_hidden(batch))
        b, k, d = h_BxKxD.shape
        table_VxD = self.embed.embedding[...].astype(h_BxKxD.dtype)
        bias_V = (jnp.zeros((self.cfg.vocab_size,), jnp.float32) if self.decoder_bias is None
                  else self.decoder_bias[...].astype(jnp.float32))
        nll_M, correct_M = tied_head_xent(h_BxKxD.reshape(b * k, d), table_VxD, bias_V,
                                          batch.mask_labels_BxK.reshape(b * k))
        return nll_M.reshape(b, k), correct_M.reshape(b, k)

    def mean_pool(self, batch: MLMBatch):
        """[B, D] mean of the final hidden states over each row's tokens (padding left out)."""
        hidden_BxSxD = self(batch.input_ids_BxS, batch.segment_ids_BxS, batch.positions_BxS).astype(jnp.float32)
        w_BxS = (batch.segment_ids_BxS > 0).astype(jnp.float32)
        return (hidden_BxSxD * w_BxS[..., None]).sum(1) / jnp.maximum(w_BxS.sum(1, keepdims=True), 1.0)


def mlm_loss(model: Encoder, batch: MLMBatch):
    """Mean cross-entropy over the batch's masked positions (weighted by ``mask_weights``)."""
    nll_BxK, correct_BxK = model.masked_xent(batch)
    w_BxK = batch.mask_weights_BxK
    n = jnp.maximum(w_BxK.sum(), 1.0)
    loss = (nll_BxK * w_BxK).sum() / n
    acc = (correct_BxK * w_BxK).sum() / n
    return loss, {"accuracy": acc, "masked": w_BxK.sum()}


def count_params(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
