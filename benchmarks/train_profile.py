"""Where the train step's time goes: a per-op profile of the compiled step (XLA:CPU thunks, or on
a GPU the kernels of the compute stream, each named by its HLO instruction).

Traces a few steps with ``jax.profiler``, reads the trace back (``jax.profiler.ProfileData``),
and sums each HLO instruction's wall time (threads of a split op merged), grouped by phase
(forward / backward / update, from the op's JAX name stack) and op class. Also prints the GEMM
floor: the step's matmul FLOPs at the speed ``jax.jit(a @ b)`` reaches on each shape alone.

    python benchmarks/train_profile.py            # reference shape, as train_throughput.py
    python benchmarks/train_profile.py --top 25   # and the 25 costliest instructions
"""

from __future__ import annotations

import argparse
import collections
import glob
import re
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import add_shape_args, random_batch, shape_config  # noqa: E402

from xelm.config import ModelConfig, Stage, TrainConfig  # noqa: E402
from xelm.model import Encoder, compute_dtype  # noqa: E402
from xelm.train import Trainer, _train_step, data_mesh, make_optimizer, shard_batch  # noqa: E402

INSTR = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.*?) (\S+)\((.*)$")


def instructions(hlo: str) -> dict[str, tuple[str, str, str]]:
    """name -> (opcode, JAX op_name, result shape) of every instruction in the compiled HLO."""
    out = {}
    for line in hlo.splitlines():
        m = INSTR.match(line)
        if m:
            op_name = re.search(r'op_name="([^"]*)"', line)
            out[m.group(1)] = (m.group(3), op_name.group(1) if op_name else "", m.group(2))
    return out


def phase(op_name: str) -> str:
    if "transpose(jvp" in op_name:
        return "backward"
    return "forward" if "jvp(" in op_name else "update"


def op_class(name: str, opcode: str, op_name: str) -> str:
    if "dot_product_attention" in op_name or re.search("cudnn|fmha|flash", name):
        return "attention (fused kernel)"
    if (name.startswith(("ynn_fusion", "gemm_fusion", "cublas")) or opcode in ("dot", "custom-call")
            or re.search("gemm|nvjet|xmma|cutlass", name)):
        return "attention matmuls" if re.search(r"b[nqk]{1,3}[nh]?,b", op_name) else "GEMMs (dense, head)"
    if "gather" in name or "scatter" in name or "gather" in op_name or "scatter" in op_name:
        return "gather / scatter (masked positions)"
    if "iota" in name and "reduce" in name or "argmax" in op_name:
        return "argmax (accuracy)"
    if "exponential" in name or "softmax" in op_name or "reduce_max" in op_name or "exp" in op_name.split("/")[-1]:
        return "softmax / exp"
    if name.startswith(("copy", "transpose")) or op_name.endswith("/transpose"):
        return "transposes / copies"
    if "rsqrt" in name or "rsqrt" in op_name or "square" in op_name:
        return "layer norms"
    if "erf" in name or "erfc" in op_name or "tanh" in op_name:
        return "activation (GELU)"
    if "select" in name or "select_n" in op_name or "compare" in name:
        return "attention mask"
    if "cos" in name or "sin" in name:
        return "rope"
    if "concatenate" in op_name or "pad" in op_name:
        return "concatenates (GeGLU split, rope halves)"
    return "elementwise / reductions"


def op_times(trace_dir: str, steps: int) -> dict[str, float]:
    """Per HLO instruction, wall seconds per step (intervals on all threads merged)."""
    from jax.profiler import ProfileData
    path = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0]
    spans = collections.defaultdict(list)
    planes = list(ProfileData.from_file(path).planes)
    gpu = jax.default_backend() == "gpu"
    for plane in planes:
        if plane.name != ("/device:GPU:0" if gpu else "/host:CPU"):
            continue
        for line in plane.lines:
            if gpu and line.name.startswith("Stream") and "Compute" in line.name:
                for ev in line.events:  # a kernel; its HLO instruction is the hlo_op stat
                    op = dict(ev.stats).get("hlo_op") or ev.name
                    spans[str(op)].append((ev.start_ns, ev.start_ns + ev.duration_ns))
            elif not gpu and line.name.startswith("tf_XLAEigen"):
                for ev in line.events:
                    if "ThunkExecutor" not in ev.name and "Slinky" not in ev.name:
                        spans[ev.name].append((ev.start_ns, ev.start_ns + ev.duration_ns))
    if not spans:
        lines = {p.name: sorted({ln.name for ln in p.lines})[:12] for p in planes}
        raise SystemExit(f"no op events in the trace; its planes and lines: {lines}")
    out = {}
    for name, iv in spans.items():
        iv.sort()
        total, (s, e) = 0.0, iv[0]
        for a, b in iv[1:]:
            if a > e:
                total, s, e = total + e - s, a, b
            else:
                e = max(e, b)
        out[name] = (total + e - s) / 1e9 / steps
    return out


def gemm_speed(m: int, k: int, n: int, dtype, reps: int = 5) -> float:
    """FLOP/s of ``a @ b`` alone: the best of ``reps`` timings of a burst of calls (on a GPU one
    call is shorter than its dispatch, so a single call would time Python, not the GEMM)."""
    a = jax.random.normal(jax.random.key(0), (m, k), dtype)
    b = jax.random.normal(jax.random.key(1), (k, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    calls = 1 if jax.default_backend() == "cpu" else 20
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(calls):
            out = f(a, b)
        out.block_until_ready()
        best = min(best, (time.perf_counter() - t) / calls)
    return 2 * m * k * n / best


def gemm_floor(cfg: ModelConfig, batch: int, seq: int, mask_ratio: float, dtype) -> float:
    """Seconds the step's dense and head matmuls need at their shapes' isolated jit speed
    (forward, and the two backward GEMMs of each: 3x the forward FLOPs)."""
    t, d, f = batch * seq, cfg.hidden, cfg.ffn
    k = batch * max(1, round(mask_ratio * seq))
    shapes = [(t, d, 3 * d), (t, d, d), (t, d, 2 * f if cfg.gated_mlp else f), (t, f, d)] * cfg.layers
    shapes += [(k, d, d), (k, d, cfg.vocab_size)]
    speed = {s: gemm_speed(*s, dtype) for s in set(shapes)}
    return sum(3 * 2 * m * kk * n / speed[(m, kk, n)] for m, kk, n in shapes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(ap)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--top", type=int, default=0, help="also list the N costliest instructions")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--rows-out", type=Path, help="write every instruction's time to this TSV file")
    a = ap.parse_args()
    cfg = shape_config(a, a.dtype)
    model = Encoder(cfg, rngs=nnx.Rngs(0))
    tc = TrainConfig(steps=10_000, warmup_steps=10)
    stages = (Stage("all", 1.0, "all", a.mask_ratio, 0.5),)
    trainer = Trainer.create(model, make_optimizer(model, tc, stages), data_mesh())
    rng = np.random.default_rng(0)
    batches = [random_batch(rng, cfg, a.batch, a.seq, a.mask_ratio) for _ in range(4)]
    hlo = _train_step.lower(trainer.graphdef, trainer.state,
                           shard_batch(batches[0], trainer.mesh)).compile().as_text()
    info = instructions(hlo)
    for b in batches[:2]:
        jax.block_until_ready(trainer.step(b))
    with tempfile.TemporaryDirectory() as trace:
        t = time.perf_counter()
        jax.profiler.start_trace(trace)
        for i in range(a.steps):
            m = trainer.step(batches[i % 4])
        jax.block_until_ready(m)
        jax.profiler.stop_trace()
        step_s = (time.perf_counter() - t) / a.steps
        times = op_times(trace, a.steps)
    table = collections.defaultdict(float)
    rows = []
    for name, sec in times.items():
        opcode, op_name, shape = info.get(name, ("?", "", ""))
        key = (phase(op_name), op_class(name, opcode, op_name))
        table[key] += sec
        rows.append((sec, name, key, shape.split("{")[0], op_name.removeprefix("jit(_train_step)/")))
    ops = sum(times.values())
    floor = gemm_floor(cfg, a.batch, a.seq, a.mask_ratio, compute_dtype(cfg))
    print(f"step {step_s * 1e3:.1f} ms (traced; ops {ops * 1e3:.1f} ms, the rest is gaps and dispatch); "
          f"GEMM floor {floor * 1e3:.1f} ms; {jax.device_count()} {jax.default_backend()} device(s)")
    print(f"{'phase':10}{'op class':38}{'ms/step':>9}{'share':>8}")
    for (ph, cls), sec in sorted(table.items(), key=lambda kv: -kv[1]):
        print(f"{ph:10}{cls:38}{sec * 1e3:>9.1f}{sec / ops:>8.1%}")
    for ph in ("forward", "backward", "update"):
        sec = sum(v for (p, _), v in table.items() if p == ph)
        print(f"{ph:10}{'(all)':38}{sec * 1e3:>9.1f}{sec / ops:>8.1%}")
    for sec, name, (ph, cls), shape, op_name in sorted(rows, reverse=True)[:a.top]:
        print(f"  {sec * 1e3:7.1f} ms  {name:30} {ph:9} {cls[:24]:24} {shape:24} {op_name[:50]}")
    if a.rows_out:
        a.rows_out.write_text("ms_per_step\tinstruction\tphase\tclass\tshape\top_name\n" + "".join(
            f"{sec * 1e3:.4f}\t{name}\t{ph}\t{cls}\t{shape}\t{op_name}\n"
            for sec, name, (ph, cls), shape, op_name in sorted(rows, reverse=True)))


if __name__ == "__main__":
    jnp.zeros(1)
    main()
