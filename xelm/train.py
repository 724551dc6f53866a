"""Pre-training the base encoder: a jitted, donated train step, data parallel over a mesh,
the mmBERT curriculum, Orbax checkpoints with exact resume, JSONL metrics and a loss plot."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from xelm.batches import TokenizedCorpus, make_batch
from xelm.checkpoint import Checkpointer
from xelm.config import RunConfig, Stage, TrainConfig
from xelm.curriculum import stage_index, stage_probabilities, wsd_schedule
from xelm.model import Encoder, mlm_loss

BATCH_KEYS = ("input_ids", "segment_ids", "positions", "mask_positions", "mask_labels", "mask_weights")


def make_optimizer(model: Encoder, cfg: TrainConfig, stages: tuple[Stage, ...]) -> nnx.Optimizer:
    """AdamW with WSD schedule and global-norm clipping; no weight decay on norms and biases."""
    def decay_mask(params):
        return jax.tree.map(lambda p: p.ndim > 1, params)
    tx = optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(wsd_schedule(cfg, stages), b1=cfg.b1, b2=cfg.b2, eps=1e-6,
                    weight_decay=cfg.weight_decay, mask=decay_mask))
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def data_mesh() -> jax.sharding.Mesh:
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def shard_batch(batch: dict, mesh: jax.sharding.Mesh) -> dict:
    """Place the global batch's rows over the mesh; each process gives only its own rows."""
    sharding = NamedSharding(mesh, P("data"))
    n, i = jax.process_count(), jax.process_index()
    out = {}
    for k in BATCH_KEYS:
        rows = batch[k]
        local = np.array_split(rows, n)[i] if n > 1 else rows
        out[k] = jax.make_array_from_process_local_data(sharding, local, rows.shape)
    return out


class Trainer:
    """Holds the split model+optimizer state and the compiled step."""

    def __init__(self, model: Encoder, optimizer: nnx.Optimizer, mesh: jax.sharding.Mesh):
        self.graphdef, state = nnx.split((model, optimizer))
        self.mesh = mesh
        self.state = jax.device_put(state, NamedSharding(mesh, P()))
        self._step = jax.jit(partial(_train_step, self.graphdef), donate_argnums=0)

    def step(self, batch: dict) -> dict:
        self.state, metrics = self._step(self.state, shard_batch(batch, self.mesh))
        return metrics

    def model(self) -> Encoder:
        return nnx.merge(self.graphdef, self.state)[0]


def _train_step(graphdef, state, batch):
    model, optimizer = nnx.merge(graphdef, state)
    (loss, aux), grads = nnx.value_and_grad(mlm_loss, has_aux=True)(model, batch)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}


@dataclass
class TrainResult:
    step: int
    loss: float
    tokens: int
    tokens_by_lang: dict[str, int]
    resumed_from: int | None
    model: Encoder


def train(cfg: RunConfig, corpus: TokenizedCorpus, out_dir: str | Path, *, mask_id: int,
          model: Encoder | None = None, max_steps: int | None = None, progress: bool = True,
          desc: str = "train") -> TrainResult:
    """Train ``model`` (or a fresh encoder) under ``out_dir``: checkpoints/, metrics.jsonl,
    loss.png. Resumes from the latest checkpoint there, exactly (batches depend on step only)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tc, stages = cfg.train, cfg.curriculum
    if model is None:
        model = Encoder(cfg.model, rngs=nnx.Rngs(tc.seed))
    trainer = Trainer(model, make_optimizer(model, tc, stages), data_mesh())
    ckpt = Checkpointer(out_dir / "checkpoints", keep=tc.keep_checkpoints)
    step, tokens, by_lang, resumed = 0, 0, {}, ckpt.latest_step()
    if resumed is not None:
        trainer.state, meta = ckpt.restore(trainer.state)
        step, tokens, by_lang = meta["step"], meta["tokens"], meta["tokens_by_lang"]
    metrics_path = out_dir / "metrics.jsonl"
    rows = _truncate_metrics(metrics_path, step)
    end = min(tc.steps, max_steps) if max_steps is not None else tc.steps
    sizes = corpus.sizes()
    probs_cache: dict[int, dict] = {}
    schedule = wsd_schedule(tc, stages)
    loss = rows[-1]["loss"] if rows else float("nan")  # a run resumed at its end keeps its loss
    bar = tqdm(total=end, initial=step, desc=desc, disable=not progress, unit="step", dynamic_ncols=True)
    t_last, tokens_last = time.perf_counter(), tokens
    with open(metrics_path, "a") as log:
        while step < end:
            si = stage_index(step, stages, tc.steps)
            stage = stages[si]
            probs = probs_cache.setdefault(si, stage_probabilities(stage, sizes))
            batch = make_batch(corpus, probs, cfg.data.batch_size, cfg.data.seq_len, stage.mask_ratio,
                               mask_id, cfg.model.vocab_size, tc.seed, step)
            metrics = trainer.step(batch)
            step += 1
            tokens += batch["input_ids"].size
            for lang, n in batch["tokens_by_lang"].items():
                by_lang[lang] = by_lang.get(lang, 0) + n
            if step % tc.log_every == 0 or step == end:
                m = jax.device_get(metrics)
                loss = float(m["loss"])
                now = time.perf_counter()
                rate = (tokens - tokens_last) / max(now - t_last, 1e-9)
                t_last, tokens_last = now, tokens
                row = {"step": step, "loss": loss, "accuracy": float(m["accuracy"]),
                       "grad_norm": float(m["grad_norm"]), "tokens": tokens,
                       "lr": float(schedule(step - 1)), "stage": stage.name,
                       "mask_ratio": stage.mask_ratio, "temperature": stage.temperature,
                       "languages": len(probs), "tokens_per_s": rate}
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{loss:.3f}", stage=stage.name, mask=stage.mask_ratio,
                                tau=stage.temperature, tok_s=f"{rate:,.0f}")
            if step % tc.checkpoint_every == 0 or step == end:
                ckpt.save(step, trainer.state, {"step": step, "tokens": tokens, "tokens_by_lang": by_lang,
                                                "data_position": {"seed": tc.seed, "next_step": step}})
            bar.update(1)
    bar.close()
    ckpt.wait()
    ckpt.close()
    plot_loss(metrics_path, out_dir / "loss.png")
    return TrainResult(step, loss, tokens, by_lang, resumed, trainer.model())


def _truncate_metrics(path: Path, step: int) -> list[dict]:
    """Drop rows logged after the checkpoint we resume from (and a last line a kill cut short),
    so the log matches the state; rewritten atomically, so a second kill loses nothing."""
    if not path.exists():
        return []
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row["step"] <= step:
            keep.append(row)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
    tmp.replace(path)
    return keep


def plot_loss(metrics_path: Path, out: Path) -> Path | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(r) for r in metrics_path.read_text().splitlines() if r.strip()]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = np.array([r["step"] for r in rows])
    ax.plot(steps, [r["loss"] for r in rows], lw=1.2)
    for name in dict.fromkeys(r["stage"] for r in rows):
        s = steps[[r["stage"] == name for r in rows]]
        ax.axvspan(s.min(), s.max(), alpha=0.08, color=f"C{len(ax.patches) % 10}")
        ax.text(s.min(), ax.get_ylim()[1], f" {name}", va="top", fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("masked-LM loss")
    ax.set_title("Training loss (shaded: curriculum stages)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


@partial(jax.jit, static_argnums=0)
def _eval_step(graphdef, state, batch):
    return mlm_loss(nnx.merge(graphdef, state), batch)[0]


def evaluate_loss(model: Encoder, batches: list[dict]) -> float:
    """Mean masked-LM loss over fixed batches (same masks for every model compared)."""
    graphdef, state = nnx.split(model)
    losses = [_eval_step(graphdef, state, {k: jnp.asarray(b[k]) for k in BATCH_KEYS}) for b in batches]
    return float(np.mean(jax.device_get(losses)))
