"""cuDNN attention over packed segments, against the boolean-mask path the encoder takes (GPU only).

`xelm.model.attend` hands cuDNN the packed rows' segment mask as a dense [B, 1, S, S] bias. cuDNN
can instead take each row's segments as offsets and lengths (JAX's private "packed layout", the
THD format), with no bias to read. This probe swaps that path into every layer (its documents
are 64 tokens, so with --local-window of at least 128 a local layer's mask is the segment mask
too), checks that attention's output and gradients and the model's loss and gradients match the mask
path, and times the train step both ways in interleaved rounds. It is the evidence for moving
the encoder to that path (which needs a static bound on segments per row in the batch), not a
path the encoder takes.

    python benchmarks/packed_attention.py --vocab 32768 --hidden 1024 --layers 28 --heads 16 \\
        --ffn 2624 --seq 512 --batch 64 --local-window 512
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from train_throughput import add_shape_args, flops_per_token, random_batch, shape_config, tokens_per_s

import xelm.model as model_lib
from xelm.batches import MLMBatch, mask_rows
from xelm.config import ModelConfig, Stage, TrainConfig
from xelm.train import Trainer, _train_step, data_mesh, make_optimizer, shard_batch


def segment_offsets(segment_ids_BxS, max_segments: int):
    """Per row, each segment's length and first position ([B, M] and [B, M + 1]; -1 past a row's
    last segment, as cuDNN's packed layout wants). Segments are contiguous runs numbered 1..M
    from the row's start; padding (0) belongs to none."""
    ids_M = jnp.arange(1, max_segments + 1)
    in_BxSxM = segment_ids_BxS[:, :, None] == ids_M
    lens_BxM = in_BxSxM.sum(1).astype(jnp.int32)
    starts_BxM = jnp.argmax(in_BxSxM, axis=1).astype(jnp.int32)
    present = lens_BxM > 0
    offsets_BxM1 = jnp.concatenate([jnp.where(present, starts_BxM, -1),
                                    jnp.full((lens_BxM.shape[0], 1), -1, jnp.int32)], axis=1)
    return jnp.where(present, lens_BxM, -1), offsets_BxM1


def packed_attend(max_segments: int):
    """``attend`` with segment ids in place of the mask: cuDNN's packed layout, no bias. Padding
    positions belong to no segment and their outputs are left unset (the probe's rows have none;
    the encoder would zero them)."""
    from jax._src.cudnn import fused_attention_stablehlo as cudnn

    def attend(q_BxSxNxH, k_BxSxNxH, v_BxSxNxH, segment_ids_BxS):
        lens, offsets = segment_offsets(segment_ids_BxS, max_segments)
        return cudnn.dot_product_attention(
            q_BxSxNxH, k_BxSxNxH, v_BxSxNxH, q_seqlen=lens, kv_seqlen=lens, q_offsets=offsets,
            kv_offsets=offsets, scale=q_BxSxNxH.shape[-1] ** -0.5, mask_type=cudnn.MaskType.PADDING,
            qkv_layout="BTNH")
    return attend


def use_path(name: str, max_segments: int) -> None:
    """Point the encoder at the mask path or the packed one (read when a step is traced)."""
    if name == "packed":
        model_lib.attention_mask = lambda segment_ids_BxS, positions_BxS, window: segment_ids_BxS
        model_lib.attend = packed_attend(max_segments)
    else:
        model_lib.attention_mask, model_lib.attend = ORIGINAL


ORIGINAL = (model_lib.attention_mask, model_lib.attend)


def relative(a, b) -> float:
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    return float(jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(b), 1e-30))


def check(max_segments: int, doc_len: int) -> None:
    """Attention (against the f32 einsums) and a small model's loss and gradients, both paths."""
    rng = np.random.default_rng(0)
    b, s, n, h = 2, doc_len * max_segments, 4, 64
    q, k, v, w = (jnp.asarray(rng.standard_normal((b, s, n, h)), jnp.float32) for _ in range(4))
    seg = jnp.asarray(np.broadcast_to(np.arange(s) // doc_len + 1, (b, s)), jnp.int32)
    pos = jnp.asarray(np.broadcast_to(np.arange(s) % doc_len, (b, s)), jnp.int32)
    mask = ORIGINAL[0](seg, pos, None)
    ref = (ORIGINAL[1](q, k, v, mask), *jax.grad(lambda *a: (ORIGINAL[1](*a, mask) * w).sum(), (0, 1, 2))(q, k, v))
    half = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    for name, attend, arg in (("mask", ORIGINAL[1], mask), ("packed", packed_attend(max_segments), seg)):
        def weighted(q, k, v, attend=attend, arg=arg):
            return (attend(q, k, v, arg).astype(jnp.float32) * w).sum()
        got = (jax.jit(attend)(*half, arg), *jax.jit(jax.grad(weighted, (0, 1, 2)))(*half))
        print(f"attention, {name:6} path, bf16 against f32: out / dq / dk / dv "
              + " / ".join(f"{relative(a, r):.2e}" for a, r in zip(got, ref)))
    cfg = ModelConfig(vocab_size=4096, hidden=256, layers=2, heads=4, ffn=512, max_len=512,
                      local_window=512, dtype="bfloat16")
    ids = rng.integers(5, 4096, (b, s)).astype(np.int32)
    inputs, mpos, labels, weights = mask_rows(ids, 0.3, rng, 4, 4096, np.arange(5))
    batch = MLMBatch(inputs, np.asarray(seg), np.asarray(pos), mpos, labels, weights)
    results = {}
    for name in ("mask", "packed"):
        use_path(name, max_segments)
        graphdef, state = nnx.split(model_lib.Encoder(cfg, rngs=nnx.Rngs(0)))

        def loss(st, graphdef=graphdef):
            return model_lib.mlm_loss(nnx.merge(graphdef, st), batch)[0]
        results[name] = jax.jit(jax.value_and_grad(loss))(state)
    grads = zip(jax.tree.leaves(results["mask"][1]), jax.tree.leaves(results["packed"][1]))
    worst = max(relative(p, m) for m, p in grads)
    print(f"model: loss {float(results['mask'][0]):.6f} (mask) {float(results['packed'][0]):.6f} (packed); "
          f"largest relative difference of a parameter's gradient {worst:.1e}")
    use_path("mask", max_segments)


def compiled_step(cfg: ModelConfig, batch: int, seq: int, mask_ratio: float):
    """A fresh trace of the train step under the current path (the jit cache would reuse the other)."""
    model = model_lib.Encoder(cfg, rngs=nnx.Rngs(0))
    tc, stages = TrainConfig(steps=10_000, warmup_steps=10), (Stage("all", 1.0, "all", mask_ratio, 0.5),)
    trainer = Trainer.create(model, make_optimizer(model, tc, stages), data_mesh())
    rng = np.random.default_rng(0)
    batches = [shard_batch(random_batch(rng, cfg, batch, seq, mask_ratio), trainer.mesh) for _ in range(4)]
    jax.clear_caches()
    compiled = _train_step.lower(trainer.graphdef, trainer.state, batches[0]).compile()
    box = {"state": trainer.state, "i": 0}

    def step(n: int):
        for _ in range(n):
            box["state"], metrics = compiled(box["state"], batches[box["i"] % 4])
            box["i"] += 1
        jax.block_until_ready(metrics)
    step(2)
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(ap)
    ap.add_argument("--steps", type=int, default=10, help="steps per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="for MFU (H100/H200 dense bf16: 989)")
    a = ap.parse_args()
    if jax.default_backend() != "gpu":
        raise SystemExit(f"packed_attention.py needs cuDNN (a GPU); JAX's backend here is {jax.default_backend()}")
    doc_len = 64  # random_batch packs documents of 64 tokens
    if a.local_window < 2 * doc_len:
        raise SystemExit("--local-window must be at least 128 here: the packed path has no window")
    max_segments = -(-a.seq // doc_len)
    check(max_segments, doc_len)
    cfg = shape_config(a, "bfloat16")
    steps = {}
    for name in ("mask", "packed"):
        use_path(name, max_segments)
        steps[name] = compiled_step(cfg, a.batch, a.seq, a.mask_ratio)
    use_path("mask", max_segments)
    rounds: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(a.rounds):
        for name, step in steps.items():
            rounds[name].append(tokens_per_s(step, a.steps, a.batch * a.seq))
    fpt = flops_per_token(cfg, a.seq, a.mask_ratio)
    for name, tps in rounds.items():
        med = float(np.median(tps))
        print(f"{name:6} path: {med:,.0f} tokens/s, MFU {med * fpt / (a.peak_tflops * 1e12):.1%} "
              f"(rounds {', '.join(f'{x:,.0f}' for x in tps)})")
    print(f"packed / mask: {np.median(rounds['packed']) / np.median(rounds['mask']):.3f}x")


if __name__ == "__main__":
    main()
