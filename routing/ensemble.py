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

from xelm.batches import MLMBatch


def stack_states(states: list) -> nnx.State:
    """The experts' states (from ``nnx.split``) stacked: [E, ...] on every leaf."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


SEQUENTIAL_TOKENS = 2048  # on CPU, batches of more tokens (B x S) map over experts sequentially


def sequential(batch: MLMBatch, above: int = SEQUENTIAL_TOKENS) -> bool:
    """Whether the compiled call should run the experts one by one (static, per batch shape):
    on CPU, for batches of more than ``above`` tokens."""
    return jax.default_backend() == "cpu" and batch.input_ids_BxS.size > above


def over_experts(fn, states_E, one_by_one: bool):
    """``fn`` on each expert's state, stacked results: vmap, or lax.map (see the module doc)."""
    return jax.lax.map(fn, states_E) if one_by_one else jax.vmap(fn)(states_E)


def mixture_logprobs(logp_ExBx_, logw_BxE):
    """log Σ_e w_be p_e(.) for per-expert log-probabilities [E, B, ...] and log-weights [B, E]."""
    logw_ExB = logw_BxE.T
    logw_ExBx_ = logw_ExB.reshape(logw_ExB.shape + (1,) * (logp_ExBx_.ndim - 2))
    return jax.nn.logsumexp(logw_ExBx_ + logp_ExBx_, axis=0)


@partial(jax.jit, static_argnums=(0, 1))
def label_logprobs(graphdef, one_by_one: bool, states_E, batch: MLMBatch):
    """[E, B, K] each expert's log-probability of the true token at each masked position."""
    def one(state):
        return nnx.merge(graphdef, state).masked_label_logprobs(batch)
    return over_experts(one, states_E, one_by_one)


@partial(jax.jit, static_argnums=(0, 1))
def mixture_label_nll(graphdef, one_by_one: bool, states_E, logw_BxE, batch: MLMBatch):
    """[B] -Σ_k log Σ_e w_be p_e(true token k) over each row's real masks: the mixture's summed
    loss per text in one compiled call (serving: no per-batch work left outside it)."""
    mix_BxK = mixture_logprobs(label_logprobs(graphdef, one_by_one, states_E, batch), logw_BxE)
    return -(mix_BxK * batch.mask_weights_BxK).sum(1)


@partial(jax.jit, static_argnums=(0, 1))
def mixture_vocab_logprobs(graphdef, one_by_one: bool, states_E, logw_BxE, batch: MLMBatch):
    """[B, K, V] the mixture's log p(. | text) at the masked positions (fill-mask)."""
    def one(state):
        return jax.nn.log_softmax(nnx.merge(graphdef, state).masked_logits(batch), axis=-1)
    return mixture_logprobs(over_experts(one, states_E, one_by_one), logw_BxE)


@partial(jax.jit, static_argnums=(0, 1))
def mixture_embeddings(graphdef, one_by_one: bool, states_E, w_BxE, batch: MLMBatch):
    """[B, D] Σ_e w_be (mean of expert e's final hidden states over the text's tokens)."""
    def one(state):
        return nnx.merge(graphdef, state).mean_pool(batch)
    return jnp.einsum("ebd,be->bd", over_experts(one, states_E, one_by_one), w_BxE)
