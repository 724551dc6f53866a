"""The train step taken apart: forward (loss), gradient and the whole step at one shape, and the
MLM head's GEMM at the inner sizes the head can have (D, D + 1, D + 8): where a slow step's
time goes, on any backend.

    python benchmarks/step_breakdown.py --vocab 32768 --hidden 768 --layers 22 --heads 12 \\
        --ffn 1152 --seq 512 --batch 64 --local-window 512 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from train_throughput import add_shape_args, random_batch, shape_config, xelm_step

from xelm.model import Encoder, compute_dtype, mlm_loss


def ms_per_call(f, *args, n: int = 10) -> float:
    jax.block_until_ready(f(*args))
    t = time.perf_counter()
    for _ in range(n):
        out = f(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(ap)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    a = ap.parse_args()
    cfg = shape_config(a, a.dtype)
    dt, key = compute_dtype(cfg), jax.random.key(0)
    m = int(a.batch * a.seq * a.mask_ratio)
    print(f"head GEMM [{m}, K] x [K, {a.vocab}], {jnp.dtype(dt)}:")
    for k in (a.hidden, a.hidden + 1, a.hidden + 8):
        h, table = jax.random.normal(key, (m, k), dt), jax.random.normal(key, (a.vocab, k), dt)
        ms = ms_per_call(jax.jit(lambda h, t: jnp.dot(h, t.T, preferred_element_type=jnp.float32)), h, table)
        print(f"  K={k:<6}{ms:9.2f} ms {2 * m * k * a.vocab / ms / 1e9:9.1f} TFLOP/s")

    batch = random_batch(np.random.default_rng(0), cfg, a.batch, a.seq, a.mask_ratio)
    graph, state = nnx.split(Encoder(cfg, rngs=nnx.Rngs(0)))
    loss = jax.jit(lambda s, b: mlm_loss(nnx.merge(graph, s), b)[0])
    grad = jax.jit(jax.grad(lambda s, b: mlm_loss(nnx.merge(graph, s), b)[0]))
    step = xelm_step(cfg, a.batch, a.seq, a.mask_ratio)
    t = time.perf_counter()
    step(10)
    full = (time.perf_counter() - t) / 10 * 1e3
    print(f"step at B={a.batch} S={a.seq}, {jnp.dtype(dt)}, {jax.devices()[0].device_kind}:")
    print(f"  forward (loss) {ms_per_call(loss, state, batch):9.1f} ms")
    print(f"  gradient       {ms_per_call(grad, state, batch):9.1f} ms")
    print(f"  train step     {full:9.1f} ms  ({a.batch * a.seq / full * 1e3:,.0f} tokens/s)")


if __name__ == "__main__":
    main()
