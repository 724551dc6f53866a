"""The ensemble's maths: experts with stacked parameters in one compiled call, and their mixture.

Experts of a run share one graph and shapes, so their states stack on a leading axis E and
``jax.vmap`` runs them all in one XLA program (one dispatch, batched matmuls) instead of a
Python loop. The token mixture is p(y|x) = Σ_e w_e p_e(y|x), computed as
logsumexp_e(log w_e + log p_e(y|x)) so that tiny probabilities do not underflow; embeddings
mix as the weighted mean of the experts' mean-pooled hidden states.

On a CPU a big batch already keeps every core busy, and vmap's E-times larger attention
tensors fall out of cache (measured: 0.75x the loop's speed), so there the experts run one
after another inside the same compiled call (``lax.map``): still one dispatch, one program.

Shapes: E experts, B rows, S tokens, K masked positions, V vocabulary, D hidden.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx


def stack_states(states: list) -> nnx.State:
    """The experts' states (from ``nnx.split``) stacked: [E, ...] on every leaf."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


SEQUENTIAL_TOKENS = 2048  # on CPU, batches of more tokens (B x S) map over experts sequentially


def sequential(ids_BxS) -> bool:
    """Whether the compiled call should run the experts one by one (static, per batch shape)."""
    return jax.default_backend() == "cpu" and ids_BxS.size > SEQUENTIAL_TOKENS


def over_experts(fn, states_E, one_by_one: bool):
    """``fn`` on each expert's state, stacked results: vmap, or lax.map (see the module doc)."""
    return jax.lax.map(fn, states_E) if one_by_one else jax.vmap(fn)(states_E)


def mixture_logprobs(logp_ExBx_, logw_BxE):
    """log Σ_e w_be p_e(.) for per-expert log-probabilities [E, B, ...] and log-weights [B, E]."""
    logw_ExB = logw_BxE.T
    logw_ExBx_ = logw_ExB.reshape(logw_ExB.shape + (1,) * (logp_ExBx_.ndim - 2))
    return jax.nn.logsumexp(logw_ExBx_ + logp_ExBx_, axis=0)


def _masked_logprobs(graphdef, state, ids_BxS, seg_BxS, pos_BxS, mpos_BxK):
    """One expert's log p(. | text) over the vocabulary at the masked positions: [B, K, V]."""
    model = nnx.merge(graphdef, state)
    h_BxSxD = model(ids_BxS, seg_BxS, pos_BxS)
    picked_BxKxD = jnp.take_along_axis(h_BxSxD, mpos_BxK[..., None], axis=1)
    return jax.nn.log_softmax(model.mlm_logits(picked_BxKxD), axis=-1)


@partial(jax.jit, static_argnums=(0, 1))
def label_logprobs(graphdef, one_by_one: bool, states_E, ids_BxS, seg_BxS, pos_BxS, mpos_BxK, labels_BxK):
    """[E, B, K] each expert's log-probability of the true token at each masked position."""
    def one(state):
        logp_BxKxV = _masked_logprobs(graphdef, state, ids_BxS, seg_BxS, pos_BxS, mpos_BxK)
        return jnp.take_along_axis(logp_BxKxV, labels_BxK[..., None], axis=-1)[..., 0]
    return over_experts(one, states_E, one_by_one)


@partial(jax.jit, static_argnums=(0, 1))
def mixture_vocab_logprobs(graphdef, one_by_one: bool, states_E, logw_BxE, ids_BxS, seg_BxS, pos_BxS, mpos_BxK):
    """[B, K, V] the mixture's log p(. | text) at the masked positions (fill-mask)."""
    def one(state):
        return _masked_logprobs(graphdef, state, ids_BxS, seg_BxS, pos_BxS, mpos_BxK)
    return mixture_logprobs(over_experts(one, states_E, one_by_one), logw_BxE)


@partial(jax.jit, static_argnums=(0, 1))
def mixture_embeddings(graphdef, one_by_one: bool, states_E, w_BxE, ids_BxS, seg_BxS, pos_BxS):
    """[B, D] Σ_e w_be (mean of expert e's final hidden states over the text's tokens)."""
    def one(state):
        h_BxSxD = nnx.merge(graphdef, state)(ids_BxS, seg_BxS, pos_BxS).astype(jnp.float32)
        m_BxS = (seg_BxS > 0).astype(jnp.float32)
        return (h_BxSxD * m_BxS[..., None]).sum(1) / jnp.maximum(m_BxS.sum(1, keepdims=True), 1.0)
    return jnp.einsum("ebd,be->bd", over_experts(one, states_E, one_by_one), w_BxE)
