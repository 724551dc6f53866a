"""Pre-training the base encoder: a jitted, donated train step, data parallel over a mesh,
the mmBERT curriculum, Orbax checkpoints with exact resume, JSONL metrics and a loss plot."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from xelm.batches import MLMBatch, TokenizedCorpus, make_batch
from xelm.checkpoint import Checkpointer
from xelm.config import ModelConfig, RunConfig, Stage, TrainConfig
from xelm.curriculum import decay_start, stage_index, stage_probabilities, wsd_from, wsd_schedule
from xelm.errors import XelmError
from xelm.files import write_text
from xelm.model import Encoder, mlm_loss


def _decay_mask(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


@functools.lru_cache(maxsize=64)
def optimizer_transform(cfg: TrainConfig, decay_at: int) -> optax.GradientTransformation:
    """AdamW under the WSD schedule with global-norm clipping; no weight decay on norms and
    biases. Cached: equal numbers give the *same* object, so the optimizer's graph definition is
    equal and trainings of the same schedule (the k experts, the HMR models) share one compiled
    step instead of compiling one each."""
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(wsd_from(cfg, decay_at), b1=cfg.b1, b2=cfg.b2, eps=1e-6, weight_decay=cfg.weight_decay,
                    mask=_decay_mask))


def make_optimizer(model: Encoder, cfg: TrainConfig, stages: tuple[Stage, ...]) -> nnx.Optimizer:
    """The optimizer of ``model`` for a training under ``cfg`` with curriculum ``stages``."""
    numbers = dataclasses.replace(cfg, seed=0, log_every=1, checkpoint_every=1, keep_checkpoints=1)
    return nnx.Optimizer(model, optimizer_transform(numbers, decay_start(stages, cfg.steps)), wrt=nnx.Param)


def data_mesh() -> jax.sharding.Mesh:
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def shard_batch(batch: MLMBatch, mesh: jax.sharding.Mesh) -> MLMBatch:
    """Place the global batch's rows over the mesh; each process gives only its own rows."""
    sharding = NamedSharding(mesh, P("data"))
    n, i = jax.process_count(), jax.process_index()

    def place(rows):
        local = np.array_split(rows, n)[i] if n > 1 else rows
        return jax.make_array_from_process_local_data(sharding, local, rows.shape)
    return jax.tree.map(place, batch)


class Trainer:
    """Holds the split model+optimizer state (replicated over the mesh) and the compiled step."""

    def __init__(self, graphdef, state: nnx.State, mesh: jax.sharding.Mesh):
        self.graphdef, self.mesh = graphdef, mesh
        self.state = jax.device_put(state, NamedSharding(mesh, P()))

    @classmethod
    def create(cls, model: Encoder, optimizer: nnx.Optimizer, mesh: jax.sharding.Mesh) -> Trainer:
        return cls(*nnx.split((model, optimizer)), mesh)

    @classmethod
    def restore(cls, ckpt: Checkpointer, cfg: ModelConfig, tc: TrainConfig, stages: tuple[Stage, ...],
                mesh: jax.sharding.Mesh) -> tuple[Trainer, dict]:
        """The trainer at the latest checkpoint, read into an abstract model and optimizer
        (shapes only: nothing is initialised to be overwritten); returns it and the metadata."""
        def build():
            model = Encoder(cfg, rngs=nnx.Rngs(0))
            return model, make_optimizer(model, tc, stages)
        graphdef, abstract = nnx.split(nnx.eval_shape(build))
        state, meta = ckpt.restore(abstract, sharding=NamedSharding(mesh, P()))
        return cls(graphdef, state, mesh), meta

    def step(self, batch: MLMBatch) -> dict:
        self.state, metrics = _train_step(self.graphdef, self.state, shard_batch(batch, self.mesh))
        return metrics

    def model(self) -> Encoder:
        return nnx.merge(self.graphdef, self.state)[0]


@partial(jax.jit, static_argnums=0, donate_argnums=1)
def _train_step(graphdef, state, batch: MLMBatch):
    model, optimizer = nnx.merge(graphdef, state)
    (loss, aux), grads = nnx.value_and_grad(mlm_loss, has_aux=True)(model, batch)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}


BatchSource = Callable[[int], tuple[MLMBatch, dict[str, int]]]


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
          desc: str = "train", batch_source: BatchSource | None = None) -> TrainResult:
    """Train ``model`` (or a fresh encoder) under ``out_dir``: checkpoints/, metrics.jsonl,
    loss.png. Resumes from the latest checkpoint there, exactly (batches depend on step only).

    A logged (and returned) loss is the mean over the steps since the previous log line; a
    loss that becomes NaN or infinite stops training with an error naming the step.

    ``batch_source(step) -> (batch, tokens by language)`` replaces the curriculum's batches
    (it must be a pure function of the step, like ``make_batch``): the equal-compute dense
    baseline replays exactly the batches the experts trained on.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tc, stages = cfg.train, cfg.curriculum
    schedule = wsd_schedule(tc, stages)
    sizes = corpus.sizes()
    stage_probs = [stage_probabilities(stage, sizes) for stage in stages]  # checks every stage first
    mesh = data_mesh()
    ckpt = Checkpointer(out_dir / "checkpoints", keep=tc.keep_checkpoints)
    step, tokens, by_lang, resumed = 0, 0, {}, ckpt.latest_step()
    window: list[dict] = []  # per-step metrics since the last log boundary (a multiple of log_every)
    if resumed is None:
        model = model if model is not None else Encoder(cfg.model, rngs=nnx.Rngs(tc.seed))
        trainer = Trainer.create(model, make_optimizer(model, tc, stages), mesh)
    else:
        trainer, meta = Trainer.restore(ckpt, model.cfg if model is not None else cfg.model, tc, stages, mesh)
        step, tokens, by_lang = meta["step"], meta["tokens"], meta["tokens_by_lang"]
        window = list(meta.get("metrics_window", []))
    metrics_path = out_dir / "metrics.jsonl"
    main = jax.process_index() == 0  # with several processes (multi-host), process 0 writes the log
    rows = _truncate_metrics(metrics_path, step, write=main)
    end = min(tc.steps, max_steps) if max_steps is not None else tc.steps
    loss = rows[-1]["loss"] if rows else float("nan")  # a run resumed at its end keeps its loss
    bar = tqdm(total=end, initial=step, desc=desc, disable=not progress, unit="step", dynamic_ncols=True)
    t_last, tokens_last = time.perf_counter(), tokens
    with open(metrics_path if main else os.devnull, "a") as log:
        while step < end:
            si = stage_index(step, stages, tc.steps)
            stage, probs = stages[si], stage_probs[si]
            if batch_source is not None:
                batch, counts = batch_source(step)
            else:
                batch, counts = make_batch(corpus, probs, batch_size=cfg.data.batch_size, seq_len=cfg.data.seq_len,
                                           mask_ratio=stage.mask_ratio, mask_id=mask_id,
                                           vocab_size=cfg.model.vocab_size, seed=tc.seed, step=step)
            window.append(trainer.step(batch))
            step += 1
            tokens += batch.input_ids_BxS.size
            for lang, n in counts.items():
                by_lang[lang] = by_lang.get(lang, 0) + n
            at_log, at_ckpt = step % tc.log_every == 0 or step == end, step % tc.checkpoint_every == 0 or step == end
            if at_log or at_ckpt:
                window = _checked(jax.device_get(window), step)
            if at_log:
                m = {k: float(np.mean([w[k] for w in window])) for k in ("loss", "accuracy", "grad_norm")}
                loss = m["loss"]
                now = time.perf_counter()
                rate = (tokens - tokens_last) / max(now - t_last, 1e-9)
                t_last, tokens_last = now, tokens
                row = {"step": step, **m, "tokens": tokens,
                       "lr": float(schedule(step - 1)), "stage": stage.name,
                       "mask_ratio": stage.mask_ratio, "temperature": stage.temperature,
                       "languages": len(probs), "tokens_per_s": rate}
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{loss:.3f}", stage=stage.name, mask=stage.mask_ratio,
                                tau=stage.temperature, tok_s=f"{rate:,.0f}")
                if step % tc.log_every == 0:
                    window = []
            if at_ckpt:
                ckpt.save(step, trainer.state, {"step": step, "tokens": tokens, "tokens_by_lang": dict(by_lang),
                                                "data_position": {"seed": tc.seed, "next_step": step},
                                                "metrics_window": list(window)})  # copies: saved async
            bar.update(1)
    bar.close()
    ckpt.wait()
    ckpt.close()
    if main:
        plot_loss(metrics_path, out_dir / "loss.png")
    return TrainResult(step, loss, tokens, by_lang, resumed, trainer.model())


def _checked(window: list[dict], step: int) -> list[dict]:
    """The window's metrics as Python floats; a non-finite loss stops training, naming its step."""
    window = [{k: float(v) for k, v in w.items()} for w in window]
    for i, w in enumerate(window):
        if not np.isfinite(w["loss"]):
            at = step - len(window) + i + 1
            raise XelmError(f"training diverged: the loss is {w['loss']} at step {at}; lower train.lr "
                            "(or raise train.warmup_steps) and train again")
    return window


def _truncate_metrics(path: Path, step: int, write: bool = True) -> list[dict]:
    """Drop rows logged after the checkpoint we resume from (and a last line a kill cut short),
    so the log matches the state; rewritten atomically, so a second kill loses nothing."""
    if not path.exists():
        return []
    keep = [row for row in metric_rows(path) if row["step"] <= step]
    if write:
        write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
    return keep


def metric_rows(path: Path) -> list[dict]:
    """The log's rows; a line that is not a JSON object with an integer ``step`` (a kill cut it
    short, or the file was damaged) is skipped, not a traceback."""
    rows = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


MIN_PLOTTED_LOGS = 5


def plot_loss(metrics_path: Path, out: Path) -> Path | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in metric_rows(metrics_path) if isinstance(r.get("loss"), (int, float)) and "stage" in r]
    if len(rows) < MIN_PLOTTED_LOGS:  # a curve of a few points says nothing: no plot
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


def evaluate_loss(model: Encoder, batches: list[MLMBatch]) -> float:
    """Mean masked-LM loss over fixed batches (same masks for every model compared)."""
    graphdef, state = nnx.split(model)
    losses = [_eval_step(graphdef, state, b) for b in batches]
    return float(np.mean(jax.device_get(losses)))
