"""Train-step throughput of the xelm encoder, and model FLOP utilization.

Times the compiled train step after warm-up on packed random batches and prints tokens/s,
the FLOPs per token the MLM loss needs and utilization against this machine's measured matmul peak.
``--compare-torch`` runs HF transformers' ModernBertForMaskedLM (PyTorch, CPU) on the same
shapes at its fastest setting (sparse_prediction=True), in rounds interleaved with xelm's (a
shared machine's busy spells hit both), and prints the ratio of the medians and of each round.
PyTorch runs in a process of its own, at glibc's allocator defaults as PyTorch users run it:
``import xelm`` changes the process's allocator (``xelm/hostmemory.py``), which would serve
PyTorch too in this one.

    python benchmarks/train_throughput.py --vocab 16384 --hidden 256 --layers 4 --heads 4 \
        --ffn 512 --seq 128 --batch 32 --compare-torch
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xelm.batches import MLMBatch, mask_rows
from xelm.config import ModelConfig, Stage, TrainConfig
from xelm.model import Encoder, compute_dtype
from xelm.train import Trainer, data_mesh, make_optimizer


def flops_per_token(cfg: ModelConfig, seq: int, mask_ratio: float) -> float:
    """Training FLOPs per token that the MLM loss needs (3x the forward matmuls): every layer but
    the last on every token; the last one's keys and values on every token and the rest (queries,
    attention, output projection, MLP) on the masked ones; the MLM head on the masked ones. The
    same figure for both sides: work an implementation does beyond it is not counted as useful."""
    d, f = cfg.hidden, cfg.ffn
    mlp = 3 * d * f if cfg.gated_mlp else 2 * d * f
    layer = 2 * (4 * d * d + mlp) + 2 * 2 * seq * d
    last = 2 * 2 * d * d + mask_ratio * (2 * (2 * d * d + mlp) + 2 * 2 * seq * d)
    head = mask_ratio * 2 * (d * d + d * cfg.vocab_size)
    return 3 * ((cfg.layers - 1) * layer + last + head)


def matmul_peak(dtype=jnp.float32, reps: int = 10) -> float:
    """FLOP/s of a large square matmul: the machine's practical peak for this dtype (2048² on a
    CPU, 8192² on an accelerator, which a smaller product does not fill)."""
    n = 2048 if jax.default_backend() == "cpu" else 8192
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        out = f(a)
    out.block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - t)


def random_batch(rng, cfg: ModelConfig, batch: int, seq: int, mask_ratio: float) -> MLMBatch:
    ids = rng.integers(5, cfg.vocab_size, (batch, seq)).astype(np.int32)
    doc_len = 64  # packed documents of 64 tokens: several segments per row
    pos = np.broadcast_to(np.arange(seq) % doc_len, (batch, seq)).astype(np.int32)
    seg = np.broadcast_to(np.arange(seq) // doc_len + 1, (batch, seq)).astype(np.int32)
    inputs, mpos, labels, weights = mask_rows(ids, mask_ratio, rng, 4, cfg.vocab_size, np.arange(5))
    return MLMBatch(inputs, seg, pos, mpos, labels, weights)


def xelm_step(cfg: ModelConfig, batch: int, seq: int, mask_ratio: float):
    """A function that runs one compiled xelm train step (warmed up) and waits for it."""
    model = Encoder(cfg, rngs=nnx.Rngs(0))
    tc = TrainConfig(steps=10_000, warmup_steps=10)
    stages = (Stage("all", 1.0, "all", mask_ratio, 0.5),)
    trainer = Trainer.create(model, make_optimizer(model, tc, stages), data_mesh())
    rng = np.random.default_rng(0)
    batches = [random_batch(rng, cfg, batch, seq, mask_ratio) for _ in range(4)]
    count = iter(range(10**9))

    def step(n: int):
        for _ in range(n):
            m = trainer.step(batches[next(count) % 4])
        jax.block_until_ready(m)
    step(2)
    return step


def torch_step(cfg: ModelConfig, batch: int, seq: int, mask_ratio: float, device: str | None = None,
               half: bool | None = None):
    """The same for HF transformers' ModernBertForMaskedLM (PyTorch, sparse prediction), on the
    GPU when JAX runs on one, in bf16 autocast (f32 master weights) when xelm computes in bf16
    (or as ``device`` and ``half`` say)."""
    import contextlib

    import torch
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    if device is None:
        device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    if half is None:
        half = compute_dtype(cfg) == jnp.bfloat16
    autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if half else contextlib.nullcontext

    torch.manual_seed(0)
    hf = ModernBertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
                          num_attention_heads=cfg.heads, intermediate_size=cfg.ffn,
                          local_attention=cfg.local_window, global_attn_every_n_layers=cfg.global_every,
                          max_position_embeddings=max(seq, 512), sparse_prediction=True,
                          pad_token_id=0, attn_implementation="sdpa")
    model = ModernBertForMaskedLM(hf).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    rng = np.random.default_rng(0)
    ids = torch.tensor(rng.integers(5, cfg.vocab_size, (batch, seq)))
    labels = torch.full_like(ids, -100)
    masked = torch.rand(batch, seq) < mask_ratio
    labels[masked] = ids[masked]
    ids = ids.masked_fill(masked, 4)
    attn = torch.ones_like(ids)
    ids, labels, attn = ids.to(device), labels.to(device), attn.to(device)

    def step(n: int):
        for _ in range(n):
            opt.zero_grad()
            with autocast():
                loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
            loss.backward()
            opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
    step(2)
    return step


class TorchProcess:
    """:func:`torch_step` in a child process at glibc's allocator defaults (``XELM_MALLOC=system``),
    driven through a pipe: ``step(n)`` runs n steps there and waits for them."""

    def __init__(self, argv: list[str], device: str, half: bool):
        env = {**os.environ, "XELM_MALLOC": "system", "JAX_PLATFORMS": "cpu"}  # JAX stays off the GPU
        cmd = [sys.executable, __file__, *argv, "--torch-child", device, *(["--torch-half"] if half else [])]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self._read()  # warmed up

    def _read(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the PyTorch process ended (exit status {self.proc.wait()})")
        return line

    def __call__(self, n: int) -> None:
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def serve_torch_steps(cfg: ModelConfig, a) -> None:
    """The child's side of :class:`TorchProcess`: one line per request, once its steps are done."""
    step = torch_step(cfg, a.batch, a.seq, a.mask_ratio, a.torch_child, a.torch_half)
    print("ready", flush=True)
    for line in sys.stdin:
        step(int(line))
        print("done", flush=True)


def tokens_per_s(step, n: int, tokens: int) -> float:
    t = time.perf_counter()
    step(n)
    return n * tokens / (time.perf_counter() - t)


def add_shape_args(ap: argparse.ArgumentParser) -> None:
    """The reference shape (V 16384, D 256, L 4, H 4, F 512, S 128, B 32, mask 0.3), each overridable."""
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=512)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--mask-ratio", type=float, default=0.3)
    ap.add_argument("--local-window", type=int, default=128)


def shape_config(a: argparse.Namespace, dtype: str = "auto") -> ModelConfig:
    """The encoder of :func:`add_shape_args`' shape."""
    return ModelConfig(vocab_size=a.vocab, hidden=a.hidden, layers=a.layers, heads=a.heads, ffn=a.ffn,
                       max_len=max(a.seq, 512), local_window=a.local_window, dtype=dtype)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(ap)
    ap.add_argument("--steps", type=int, default=5, help="steps per round")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--compare-torch", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the chip's datasheet peak for the compute dtype (H100/H200 dense bf16: 989), "
                         "for MFU the usual way, beside utilization of the measured matmul peak")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--torch-child", help=argparse.SUPPRESS)  # the device: this process is TorchProcess's
    ap.add_argument("--torch-half", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    cfg = shape_config(a, a.dtype)
    if a.torch_child:
        return serve_torch_steps(cfg, a)
    tokens = a.batch * a.seq
    steps = {"xelm": xelm_step(cfg, a.batch, a.seq, a.mask_ratio)}
    if a.compare_torch:
        device = "cuda" if jax.default_backend() == "gpu" else "cpu"
        steps["torch"] = TorchProcess(sys.argv[1:], device, compute_dtype(cfg) == jnp.bfloat16)
    rounds: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(a.rounds):  # interleaved, so a busy spell on a shared machine hits both sides
        for k, step in steps.items():
            rounds[k].append(tokens_per_s(step, a.steps, tokens))
    if a.compare_torch:
        steps["torch"].close()
    tps = float(np.median(rounds["xelm"]))
    fpt = flops_per_token(cfg, a.seq, a.mask_ratio)
    peak = matmul_peak(dtype=compute_dtype(cfg))
    out = {"tokens_per_s": tps, "flops_per_token": fpt, "flops_utilization": tps * fpt / peak,
           "matmul_peak_flops": peak, "backend": jax.default_backend(), "devices": jax.device_count(),
           "device_kind": jax.devices()[0].device_kind, "dtype": str(jnp.dtype(compute_dtype(cfg))),
           "rounds": rounds}
    if a.peak_tflops:
        out["mfu"] = tps * fpt / (a.peak_tflops * 1e12)
    if a.compare_torch:
        out["torch_tokens_per_s"] = float(np.median(rounds["torch"]))
        out["ratio_vs_torch"] = tps / out["torch_tokens_per_s"]
        out["round_ratios"] = [x / t for x, t in zip(rounds["xelm"], rounds["torch"])]
        out["torch_flops_utilization"] = out["torch_tokens_per_s"] * fpt / peak
        if a.peak_tflops:
            out["torch_mfu"] = out["torch_tokens_per_s"] * fpt / (a.peak_tflops * 1e12)
    if a.json:
        print(json.dumps(out))
        return
    print(f"shape: V={a.vocab} D={a.hidden} L={a.layers} H={a.heads} F={a.ffn} S={a.seq} B={a.batch} "
          f"mask={a.mask_ratio} on {out['devices']} {out['backend']} device(s) ({out['device_kind']}), "
          f"{out['dtype']}")
    print(f"{'':28}{'xelm (JAX)':>14}" + (f"{'HF torch':>14}{'ratio':>8}" if a.compare_torch else ""))
    line = f"{'tokens/s':28}{tps:>14,.0f}"
    if a.compare_torch:
        line += f"{out['torch_tokens_per_s']:>14,.0f}{out['ratio_vs_torch']:>8.2f}"
    print(line)
    print(f"{'needed FLOPs/token':28}{fpt / 1e6:>13.2f}M")
    print(f"{'matmul peak (measured)':28}{peak / 1e9:>12.1f} GFLOP/s")
    line = f"{'utilization of that peak':28}{out['flops_utilization']:>14.1%}"
    if a.compare_torch:
        line += f"{out['torch_flops_utilization']:>14.1%}"
    print(line)
    if a.peak_tflops:
        line = f"{f'MFU ({a.peak_tflops:g} TFLOP/s peak)':28}{out['mfu']:>14.1%}"
        if a.compare_torch:
            line += f"{out['torch_mfu']:>14.1%}"
        print(line)
    if a.compare_torch:
        print(f"{'ratio per round':28}" + " ".join(f"{r:.2f}" for r in out["round_ratios"]))


if __name__ == "__main__":
    main()
