"""Where the evaluation's time goes: a per-op profile of one scoring call (``routing.ensemble.
label_logprobs``: each expert's log-probability of the true token at every masked slot of a
packed batch), the call ``xelm evaluate`` makes once per batch, mask set and expert. The defaults
are the demo's model (V 8192, D 256, L 4, H 4, F 512, local window 64) and the evaluation's
batches (32 packed rows of 128 tokens, a third of them masked).

    python benchmarks/scoring_profile.py               # one expert
    python benchmarks/scoring_profile.py --experts 4   # four stacked experts, run one by one
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).parent))
from train_profile import instructions, op_class, op_times  # noqa: E402
from train_throughput import random_batch, shape_config  # noqa: E402

from routing.ensemble import label_logprobs, sequential, stack_states  # noqa: E402
from xelm.model import Encoder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, default in (("vocab", 8192), ("hidden", 256), ("layers", 4), ("heads", 4), ("ffn", 512),
                          ("seq", 128), ("batch", 32), ("local-window", 64), ("experts", 1), ("calls", 5)):
        ap.add_argument(f"--{flag}", type=int, default=default)
    ap.add_argument("--mask-ratio", type=float, default=1 / 3)
    ap.add_argument("--top", type=int, default=0, help="also list the N costliest instructions")
    a = ap.parse_args()
    cfg = shape_config(a)
    graphdef, state = nnx.split(Encoder(cfg, rngs=nnx.Rngs(0)))
    states = stack_states([state] * a.experts)
    batch = random_batch(np.random.default_rng(0), cfg, a.batch, a.seq, a.mask_ratio)
    one_by_one = sequential(batch)
    info = instructions(label_logprobs.lower(graphdef, one_by_one, states, batch).compile().as_text())

    def call():
        return jax.block_until_ready(label_logprobs(graphdef, one_by_one, states, batch))

    call()
    t = time.perf_counter()
    for _ in range(a.calls):
        call()
    call_s = (time.perf_counter() - t) / a.calls
    with tempfile.TemporaryDirectory() as trace:
        with jax.profiler.trace(trace):
            for _ in range(a.calls):
                call()
        times = op_times(trace, a.calls)
    table, rows = collections.defaultdict(float), []
    for name, sec in times.items():
        opcode, op_name, shape = info.get(name, ("?", "", ""))
        table[op_class(name, opcode, op_name)] += sec
        rows.append((sec, name, shape.split("{")[0], op_name.removeprefix("jit(label_logprobs)/")))
    ops = sum(times.values())
    share = 1 / ops if ops else 0.0  # a tiny call can trace as no time at all
    tokens = a.batch * a.seq * a.experts
    print(f"scoring call {call_s * 1e3:.1f} ms: {tokens / call_s:,.0f} model-tokens/s ({a.experts} expert(s), "
          f"[{a.batch}, {a.seq}] rows, {batch.mask_positions_BxK.shape[1]} mask slots each); traced ops "
          f"{ops * 1e3:.1f} ms")
    print(f"{'op class':42}{'ms/call':>9}{'share':>8}")
    for cls, sec in sorted(table.items(), key=lambda kv: -kv[1]):
        print(f"{cls:42}{sec * 1e3:>9.1f}{sec * share:>8.1%}")
    for sec, name, shape, op_name in sorted(rows, reverse=True)[:a.top]:
        print(f"  {sec * 1e3:7.2f} ms  {name:28} {shape:24} {op_name[-60:]}")


if __name__ == "__main__":
    jnp.zeros(1)
    main()
