#!/usr/bin/env bash
# The accelerator checks in one call, for a GPU machine that has JAX, Flax, Optax, Orbax,
# transformers and PyTorch but not this project installed (run from the repository root):
#   1. versions and the card;
#   2. cuDNN's fused attention: taken (the compiled HLO calls it) and equal to the f32 einsums;
#   3. the model's loss in bf16 against f32 on one batch;
#   4. the large-sized step's kernels profiled (benchmarks/train_profile.py; every kernel's time
#      in $OUT/rows-large.tsv);
#   5. train-step throughput and MFU in bf16 against HF ModernBERT (PyTorch, bf16 autocast) at
#      the reference shape, a ModernBERT-base-sized shape (also with XLA's attention instead of
#      cuDNN's: an A/B) and a ModernBERT-large-sized one.
# Each table is also written under $OUT (or /tmp/xelm-gpu) as text.
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.45  # PyTorch runs in the same process
OUT="${OUT:-/tmp/xelm-gpu}"
mkdir -p "$OUT"
PEAK="${PEAK_TFLOPS:-989}"  # H100 / H200 SXM dense bf16, datasheet

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 - <<'EOF' || exit 1
import sys
import flax, jax, optax, orbax.checkpoint, torch, transformers
if jax.default_backend() != "gpu":
    sys.exit(f"gpu_check.sh is for a GPU machine; JAX's backend here is {jax.default_backend()}")
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, "torch", torch.__version__,
      "transformers", transformers.__version__, "devices", jax.devices())
EOF

python3 - <<'EOF' || { echo "attention check failed: the runs below use XELM_ATTENTION=xla"; export XELM_ATTENTION=xla; }
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from xelm.batches import MLMBatch, mask_rows
from xelm.config import ModelConfig
from xelm.model import Encoder, attend, attention_mask, mlm_loss

rng = np.random.default_rng(0)
B, S, N, H = 4, 256, 8, 64
q, k, v = (jnp.asarray(rng.standard_normal((B, S, N, H)), jnp.float32) for _ in range(3))
seg = jnp.asarray(np.repeat(np.arange(S) // 100 + 1, 1)[None].repeat(B, 0), jnp.int32)
pos = jnp.asarray((np.arange(S) % 100)[None].repeat(B, 0), jnp.int32)
mask = attention_mask(seg, pos, None)
ref = attend(q, k, v, mask)  # f32: the einsum path
f = jax.jit(attend)
hlo = f.lower(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), mask).compile().as_text()
out = f(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), mask).astype(jnp.float32)
err = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
print(f"attention bf16: cuDNN fused kernel in HLO: {'cudnn' in hlo.lower()}; |out - f32| / |f32| = {err:.2e}")
g = jax.grad(lambda q: (attend(q, k.astype(q.dtype), v.astype(q.dtype), mask).astype(jnp.float32) ** 2).sum())
g32, g16 = g(q), g(q.astype(jnp.bfloat16)).astype(jnp.float32)
print(f"attention bf16 gradient: |g - g32| / |g32| = {float(jnp.linalg.norm(g16 - g32) / jnp.linalg.norm(g32)):.2e}")

losses = {}
for dtype in ("float32", "bfloat16"):
    cfg = ModelConfig(vocab_size=4096, hidden=256, layers=4, heads=4, ffn=512, max_len=512, dtype=dtype)
    model = Encoder(cfg, rngs=nnx.Rngs(0))
    r = np.random.default_rng(1)
    ids = r.integers(5, 4096, (8, 256)).astype(np.int32)
    inputs, mpos, labels, weights = mask_rows(ids, 0.3, r, 4, 4096, np.arange(5))
    batch = MLMBatch(inputs, np.asarray(seg[:1].repeat(8, 0)), np.asarray(pos[:1].repeat(8, 0)), mpos, labels, weights)
    losses[dtype] = float(mlm_loss(model, batch)[0])
print(f"model loss at init: f32 {losses['float32']:.5f}, bf16 {losses['bfloat16']:.5f}, "
      f"relative difference {abs(losses['bfloat16'] - losses['float32']) / losses['float32']:.1e}")
EOF

run() {  # name, then train_throughput.py's shape flags
  local name=$1; shift
  echo; echo "== $name"
  python3 benchmarks/train_throughput.py --dtype bfloat16 --compare-torch --peak-tflops "$PEAK" \
    --steps 10 --rounds 5 "$@" | tee "$OUT/$name.txt"
}
echo; echo "== the large-sized step's kernels (command buffers off, so the trace sees each kernel)"
XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=" python3 benchmarks/train_profile.py --vocab 32768 \
  --hidden 1024 --layers 28 --heads 16 --ffn 2624 --seq 512 --batch 64 --local-window 512 --dtype bfloat16 \
  --steps 3 --rows-out "$OUT/rows-large.tsv" | tee "$OUT/profile-large.txt"
run reference
run base --vocab 32768 --hidden 768 --layers 22 --heads 12 --ffn 1152 --seq 512 --batch 64 --local-window 512
XELM_ATTENTION=xla run base-xla-attention --vocab 32768 --hidden 768 --layers 22 --heads 12 --ffn 1152 --seq 512 --batch 64 --local-window 512
run large --vocab 32768 --hidden 1024 --layers 28 --heads 16 --ffn 2624 --seq 512 --batch 64 --local-window 512
