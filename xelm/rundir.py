"""A run directory is self-describing: the resolved config, package versions, and each stage's
outputs in its own folder (tokenizer/, base/, ...)."""

from __future__ import annotations

import importlib.metadata
import json
import platform
from pathlib import Path

import yaml

from xelm.config import RunConfig, from_dict, save_config, to_dict
from xelm.errors import XelmError

PACKAGES = ("xelm", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers",
            "tokenizers", "datasets", "lang2vec")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def prepare(run_dir: str | Path, cfg: RunConfig) -> Path:
    """Create ``run_dir`` or check that it was made with the same config (resuming is safe)."""
    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    if saved.exists():
        old = load_run_config(run_dir)
        if to_dict(old) != to_dict(cfg):
            diff = _first_difference(to_dict(old), to_dict(cfg))
            raise XelmError(f"run directory {run_dir} was made with a different config ({diff}); "
                            "use a new --run-dir, or the same config to resume")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, saved)
        (run_dir / "versions.json").write_text(json.dumps(versions(), indent=2) + "\n")
    return run_dir


def load_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise XelmError(f"{run_dir} is not an xelm run directory (no config.yaml); "
                        "create one with `xelm pretrain --run-dir` or `xelm demo --run-dir`")
    try:
        return from_dict(yaml.safe_load(path.read_text("utf-8")))
    except yaml.YAMLError as e:
        raise XelmError(f"{path} is damaged: {e}") from None


def _first_difference(a, b, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}".strip("."))
    return f"{path}: {a!r} there, {b!r} now"
