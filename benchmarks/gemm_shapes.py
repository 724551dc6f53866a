"""Each GEMM of the train step alone: ``jax.jit`` against ``torch`` (2 threads on a 2-core CPU), at the
shapes of the reference step, forward and both gradients, with the operand layouts autodiff
asks for (``nt``: the second operand transposed, ``tn``: the first, ``tc``: the first transposed
into a copy, as the encoder computes its wide layers' and its head's weight gradients). Whether
the step's gap to PyTorch is in the matmul library or around it depends on the host's CPU: this
says which.

    python benchmarks/gemm_shapes.py
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from train_throughput import add_shape_args

from xelm.model import _materialised_transpose


def copied_transpose(a):
    """``a.T`` as a real copy (``tc``): in JAX the encoder's own copy of its weight gradients'
    operand (a bare transpose folds into the dot), in PyTorch ``.contiguous()``."""
    return _materialised_transpose(a) if isinstance(a, jax.Array) else a.T.contiguous()


LAYOUTS = {"nn": lambda a, b: a @ b, "nt": lambda a, b: a @ b.T, "tn": lambda a, b: a.T @ b,
           "tc": lambda a, b: copied_transpose(a) @ b}


def step_gemms(a) -> list[tuple[str, int, int, int, str]]:
    """(name, m, k, n, layout) of the step's GEMMs: m x k times k x n."""
    t, d, f, v = a.batch * a.seq, a.hidden, a.ffn, a.vocab
    m = round(t * a.mask_ratio)
    return [("qkv forward", t, d, 3 * d, "nn"), ("qkv dX", t, 3 * d, d, "nt"), ("qkv dW", d, t, 3 * d, "tn"),
            ("qkv dW", d, t, 3 * d, "tc"),
            ("GeGLU in forward", t, d, 2 * f, "nn"), ("GeGLU out forward", t, f, d, "nn"),
            ("head forward", m, d + 8, v, "nt"), ("head dh", m, v, d, "nn"),
            ("head table gradient", d + 8, m, v, "tn"),
            ("head table gradient", d + 8, m, v, "tc"), ("square 2048", 2048, 2048, 2048, "nn")]


def best_seconds(f, *args, reps: int = 10) -> float:
    f(*args)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = f(*args)
        if hasattr(out, "block_until_ready"):
            out.block_until_ready()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(ap)
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    import torch

    rng = np.random.default_rng(0)
    print(f"{'GEMM':>20} {'m x k x n':>18} {'layout':>6} {'JAX GFLOP/s':>12} {'torch':>7} {'JAX/torch':>10}")
    for name, m, k, n, layout in step_gemms(a):
        x = rng.standard_normal((k, m) if layout[0] == "t" else (m, k), dtype=np.float32)
        y = rng.standard_normal((n, k) if layout[1] == "t" else (k, n), dtype=np.float32)
        f = LAYOUTS[layout]
        t_jax = best_seconds(jax.jit(f), jax.numpy.asarray(x), jax.numpy.asarray(y), reps=a.reps)
        t_torch = best_seconds(f, torch.from_numpy(x), torch.from_numpy(y), reps=a.reps)
        flops = 2 * m * k * n
        print(f"{name:>20} {f'{m}x{k}x{n}':>18} {layout:>6} {flops / t_jax / 1e9:>12.0f} "
              f"{flops / t_torch / 1e9:>7.0f} {t_torch / t_jax:>10.2f}")


if __name__ == "__main__":
    main()
