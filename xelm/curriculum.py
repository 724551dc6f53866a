"""The mmBERT curriculum: language sets that grow by stage, a falling mask ratio, and a sampling
temperature annealed towards uniform; the learning rate decays during the final stage (WSD)."""

from __future__ import annotations

from collections.abc import Mapping

import optax

from xelm.config import Stage, TrainConfig
from xelm.data.sampling import language_probabilities
from xelm.errors import XelmError


def stage_index(step: int, stages: tuple[Stage, ...], total_steps: int) -> int:
    """Index of the stage in force at ``step`` (0-based): the first whose end lies beyond it."""
    for i, s in enumerate(stages):
        if step < round(s.until * total_steps):
            return i
    return len(stages) - 1


def stage_languages(stage: Stage, available: list[str]) -> list[str]:
    if stage.languages == "all":
        return list(available)
    missing = [lang for lang in stage.languages if lang not in available]
    if missing:
        raise XelmError(f"curriculum stage {stage.name!r} names language(s) {', '.join(missing)} "
                        "that the training data lacks")
    return list(stage.languages)


def stage_probabilities(stage: Stage, sizes: Mapping[str, int]) -> dict[str, float]:
    langs = stage_languages(stage, sorted(sizes))
    return language_probabilities({lang: sizes[lang] for lang in langs}, stage.temperature)


def decay_start(stages: tuple[Stage, ...], total_steps: int) -> int:
    """The learning rate decays over the final stage (where the last languages join)."""
    return round(stages[-2].until * total_steps) if len(stages) > 1 else round(0.8 * total_steps)


def wsd_schedule(cfg: TrainConfig, stages: tuple[Stage, ...]) -> optax.Schedule:
    """Warmup-stable-decay: linear warmup, constant, linear decay to ``min_lr_ratio * lr``."""
    return wsd_from(cfg, decay_start(stages, cfg.steps))


def wsd_from(cfg: TrainConfig, decay_at: int) -> optax.Schedule:
    """The WSD schedule whose decay starts at step ``decay_at``."""
    total = cfg.steps
    warmup = min(cfg.warmup_steps, total)
    start = max(decay_at, warmup)
    return optax.join_schedules([
        optax.linear_schedule(0.0 if warmup else cfg.lr, cfg.lr, max(warmup, 1)),
        optax.constant_schedule(cfg.lr),
        optax.linear_schedule(cfg.lr, cfg.lr * cfg.min_lr_ratio, max(total - start, 1)),
    ], boundaries=[warmup, start])
