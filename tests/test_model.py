"""Encoder behaviour: segment and window masking, masked-only loss, both architectures."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from xelm.batches import MLMBatch
from xelm.config import ModelConfig
from xelm.model import Encoder, mlm_loss

SMALL = dict(vocab_size=97, hidden=32, layers=2, heads=2, ffn=64, max_len=64)


def make(arch: str, **kw) -> Encoder:
    extra = dict(bias=True, type_vocab_size=2) if arch == "bert" else {}
    return Encoder(ModelConfig(arch=arch, **{**SMALL, **extra, **kw}), rngs=nnx.Rngs(0))


def packed_row():
    """One row, two segments: tokens 0..9 (segment 1) and 10..23 (segment 2)."""
    ids = np.arange(5, 29, dtype=np.int32)[None]
    seg = np.array([[1] * 10 + [2] * 14], np.int32)
    pos = np.array([list(range(10)) + list(range(14))], np.int32)
    return ids, seg, pos


@pytest.mark.parametrize("arch", ["modernbert", "bert"])
def test_attention_never_crosses_segments(arch):
    model = make(arch, local_window=8, global_every=2)
    ids, seg, pos = packed_row()
    out = model(jnp.asarray(ids), jnp.asarray(seg), jnp.asarray(pos))
    changed = ids.copy()
    changed[0, 12:20] = 50  # edit segment 2 only
    out2 = model(jnp.asarray(changed), jnp.asarray(seg), jnp.asarray(pos))
    np.testing.assert_allclose(out[0, :10], out2[0, :10], atol=1e-6)  # segment 1 is untouched
    assert not np.allclose(out[0, 10:], out2[0, 10:], atol=1e-4)  # segment 2 did change


def test_local_window_limits_what_a_token_sees():
    # global_every=100: layer 0 is global, layer 1 local with a window of ±2 tokens.
    cfg = ModelConfig(**{**SMALL, "layers": 2, "local_window": 4, "global_every": 100})
    model = Encoder(cfg, rngs=nnx.Rngs(1))
    ids = jnp.arange(5, 25)[None]
    seg = jnp.ones_like(ids)
    pos = jnp.arange(20)[None]
    layer = model.layers[1]
    assert layer.window == 4
    from xelm.model import attention_mask, rotary
    x = model.embed(ids)
    masks = {4: attention_mask(seg, pos, 4)}
    rotations = {layer.attn.theta: rotary(pos, cfg.hidden // cfg.heads, layer.attn.theta)}
    y = layer(x, masks, rotations)
    x2 = x.at[0, 15].set(x[0, 15] + 1.0)  # token 15 is 15 positions away from token 0
    y2 = layer(x2, masks, rotations)
    np.testing.assert_allclose(y[0, :13], y2[0, :13], atol=1e-6)  # outside ±2 of 15: unchanged
    assert not np.allclose(y[0, 13:18], y2[0, 13:18], atol=1e-5)  # inside the window: changed


@pytest.mark.parametrize("arch", ["modernbert", "bert"])
def test_masked_only_loss_equals_full_loss_restricted_to_masks(arch):
    model = make(arch)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 97, (2, 16)).astype(np.int32)
    seg = np.ones_like(ids)
    pos = np.broadcast_to(np.arange(16), ids.shape).astype(np.int32)
    mpos = np.array([[1, 4, 9], [0, 7, 15]], np.int32)
    labels = rng.integers(5, 97, (2, 3)).astype(np.int32)
    weights = np.array([[1, 1, 1], [1, 0, 1]], np.float32)
    batch = MLMBatch(*(jnp.asarray(a) for a in (ids, seg, pos, mpos, labels, weights)))
    loss, _ = mlm_loss(model, batch)
    # Reference: the head on every position, then keep the masked ones.
    logits = model.mlm_logits(model(batch.input_ids_BxS, batch.segment_ids_BxS, batch.positions_BxS))
    logp = jax.nn.log_softmax(logits, -1)
    nll = [-logp[b, mpos[b, j], labels[b, j]] for b in range(2) for j in range(3) if weights[b, j]]
    np.testing.assert_allclose(loss, np.mean(nll), rtol=1e-5)


@pytest.mark.parametrize("arch", ["modernbert", "bert"])
def test_last_layer_on_masked_rows_only_equals_the_full_pass(arch):
    # masked_hidden runs the last layer's queries, MLP and residual on the masked rows alone;
    # its states and its gradients must be those of the full pass, packed segments and a local
    # last layer included.
    from xelm.model import rows
    model = make(arch, layers=3, local_window=6, global_every=2)  # layer 2 (the last) is global
    ids, seg, pos = packed_row()
    mpos = np.array([[0, 3, 9, 10, 17, 23]], np.int32)
    batch = MLMBatch(*(jnp.asarray(a) for a in (ids, seg, pos, mpos, ids[:, mpos[0]], np.ones((1, 6), np.float32))))

    @partial(jax.jit, static_argnums=0)  # one compiled program each, not one per op
    def full(graphdef, state):
        return rows(nnx.merge(graphdef, state)(batch.input_ids_BxS, batch.segment_ids_BxS, batch.positions_BxS),
                    batch.mask_positions_BxK)

    @partial(jax.jit, static_argnums=0)
    def masked(graphdef, state):
        return nnx.merge(graphdef, state).masked_hidden(batch)

    graphdef, state = nnx.split(model)
    np.testing.assert_allclose(masked(graphdef, state), full(graphdef, state), atol=2e-6)
    weights = jax.random.normal(jax.random.key(0), (1, 6, SMALL["hidden"]))
    g_full, g_masked = (jax.jit(jax.grad(lambda s, f=f: (f(graphdef, s) * weights).sum()))(state) for f in (full, masked))
    for a, b in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_masked)):
        np.testing.assert_allclose(a, b, atol=2e-5)
    local = make(arch, layers=2, local_window=6, global_every=2)  # layer 1 (the last) is local
    graphdef, state = nnx.split(local)
    np.testing.assert_allclose(masked(graphdef, state), full(graphdef, state), atol=2e-6)


@pytest.mark.parametrize("arch", ["modernbert", "bert"])
def test_label_logprobs_over_vocab_chunks_equal_log_softmax(arch):
    from xelm.model import vocab_chunks
    model = make(arch, vocab_size=2048)  # on CPU: 4 chunks of 512
    assert vocab_chunks(2048) == 4 and vocab_chunks(97) == 1
    rng = np.random.default_rng(1)
    ids = rng.integers(5, 2048, (2, 16)).astype(np.int32)
    labels = np.array([[5, 511, 512], [1023, 1536, 2047]], np.int32)  # first and last of chunks
    batch = MLMBatch(*(jnp.asarray(a) for a in (ids, np.ones_like(ids), np.tile(np.arange(16, dtype=np.int32), (2, 1)),
                                               np.array([[1, 4, 9], [0, 7, 15]], np.int32), labels,
                                               np.ones((2, 3), np.float32))))
    logp = jax.nn.log_softmax(model.masked_logits(batch), -1)
    want = np.take_along_axis(np.asarray(logp), labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(jax.jit(lambda m, b: m.masked_label_logprobs(b))(model, batch), want, atol=2e-6)


def test_jit_and_eager_agree():
    model = make("modernbert", local_window=8)
    ids, seg, pos = (jnp.asarray(a) for a in packed_row())
    graphdef, state = nnx.split(model)
    jitted = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))(state, ids, seg, pos)
    np.testing.assert_allclose(model(ids, seg, pos), jitted, atol=1e-5)


def test_bad_model_config_is_a_clear_error():
    from xelm.errors import XelmError
    with pytest.raises(XelmError, match="arch"):
        ModelConfig(arch="gpt")
    with pytest.raises(XelmError, match="heads"):
        ModelConfig(hidden=30, heads=4)


def test_custom_gradients_equal_autodiff():
    """The wide layers' matmul and the fused MLM head carry hand-written backward passes (for
    XLA:CPU's speed): their gradients are autodiff's of the plain computation."""
    from xelm.model import linear_dot_general, tied_head_xent
    rng = np.random.default_rng(0)
    x, w = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32), jnp.asarray(rng.normal(size=(8, 24)), jnp.float32)
    dims = (((2,), (0,)), ((), ()))
    for w_ in (w, w[:, :16], w[:, :4]):  # wide (custom backward), at the threshold, narrow (plain)
        def loss(dot, x, w):
            return jnp.sum(jnp.sin(dot(x, w, dims)))
        got = jax.jit(jax.grad(partial(loss, linear_dot_general), argnums=(0, 1)))(x, w_)
        want = jax.grad(partial(loss, jax.lax.dot_general), argnums=(0, 1))(x, w_)
        for g, r in zip(got, want):
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)

    h, table = jnp.asarray(rng.normal(size=(6, 8)), jnp.float32), jnp.asarray(rng.normal(size=(50, 8)), jnp.float32)
    bias, labels = jnp.asarray(rng.normal(size=(50,)), jnp.float32), jnp.asarray(rng.integers(0, 50, 6), jnp.int32)

    def reference(h, table, bias):
        logp = jax.nn.log_softmax(h @ table.T + bias, -1)
        return -jnp.take_along_axis(logp, labels[:, None], -1)[:, 0]

    weights = jnp.arange(1.0, 7.0)
    got = jax.jit(jax.grad(lambda *a: (tied_head_xent(*a, labels)[0] * weights).sum(), argnums=(0, 1, 2)))(h, table, bias)
    want = jax.grad(lambda *a: (reference(*a) * weights).sum(), argnums=(0, 1, 2))(h, table, bias)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
