"""HF checkpoints and xelm run directories: import one as a run's base, and load any model a
``--model PATH`` names (HF directory or Hub id, xelm checkpoint, expert folder, run)."""

from __future__ import annotations

import shutil
from pathlib import Path

from xelm.config import RunConfig, TokenizerConfig, apply_overrides, from_dict, to_dict
from xelm.errors import XelmError
from xelm.files import write_json
from xelm.hf.hub import HUB_ID, resolve_model
from xelm.hf.io import is_hf_dir, load_hf
from xelm.model import Encoder
from xelm.rundir import RunDir
from xelm.tokenizer import load_tokenizer
from xelm.weights import load_weights, save_weights


def import_hf(source: str | Path, run_dir: str | Path, overrides: list[str] = ()) -> dict:
    """Make an HF checkpoint (a local directory or a Hub id) the base of ``run_dir`` (weights,
    tokenizer, config.yaml, a complete base summary), so clustering, experts and routing run on
    it unchanged. Everything is checked before anything is created: ``run_dir`` must be new,
    empty, or a run made from this same checkpoint (then the import resumes or is skipped)."""
    if any(o.split("=", 1)[0].split(".")[0] == "model" for o in overrides):
        raise XelmError("model.* cannot be overridden on import: the checkpoint decides the model")
    run = RunDir(run_dir)
    if run.root.exists() and not run.root.is_dir():
        raise XelmError(f"--run-dir {run.root} is a file: give a new or empty directory")
    if run.root.is_dir() and any(run.root.iterdir()) and not run.is_run():
        raise XelmError(f"{run.root} is not an xelm run directory and is not empty: give a new or empty "
                        "--run-dir (xelm will not write over files it did not make)")
    path = resolve_model(source)
    hub = not Path(source).exists() and bool(HUB_ID.match(str(source)))
    origin = str(source) if hub else str(Path(source).absolute())
    model, tok, info = load_hf(path, name=str(source) if hub else None)
    if len(tok) > model.cfg.vocab_size:
        raise XelmError(f"the tokenizer in {source} has {len(tok)} tokens, more than the model's vocab_size "
                        f"{model.cfg.vocab_size}")
    base = to_dict(RunConfig(model=model.cfg, tokenizer=TokenizerConfig(vocab_size=model.cfg.vocab_size)))
    cfg = from_dict(apply_overrides(base, list(overrides)))
    if run.is_run():
        earlier = _earlier_import(run, cfg, origin)
        if earlier is not None:
            return {**earlier, "skipped": True}
    run.prepare(cfg)
    stage = run.root / ".tokenizer.import"
    tok.save_pretrained(str(stage))
    _replace_dir(stage, run.tokenizer_dir)
    digest = save_weights(model, run.base_model)
    summary = {"complete": True, "imported_from": origin, **info, "step": 0, "tokens": 0,
               "loss": None, "checksum": digest, "tokens_by_lang": {}}
    write_json(run.base_summary_file, summary)
    return summary


def _earlier_import(run: RunDir, cfg: RunConfig, origin: str) -> dict | None:
    """The summary of a finished import of ``origin`` into ``run``; None when the import is to
    (re)start there. A run with another config or another base is refused."""
    if to_dict(run.config()) != to_dict(cfg):
        raise XelmError(f"{run.root} is an xelm run made with another config or model: give a new --run-dir "
                        "for this checkpoint")
    if run.base_summary_file.exists():
        summary = run.base_summary()
        if summary.get("imported_from") != origin:
            came = summary.get("imported_from") or "pre-training"
            raise XelmError(f"{run.root} already has a base encoder from {came}: give a new --run-dir to "
                            f"import {origin}")
        if summary.get("complete"):
            return summary
    elif run.has_base():
        raise XelmError(f"{run.root} already has a base encoder (pre-trained there): give a new --run-dir")
    return None


def _replace_dir(new: Path, old: Path) -> None:
    """Move ``new`` to ``old``, replacing it (an interrupted import's tokenizer of the same run)."""
    if old.exists():
        shutil.rmtree(old)
    new.rename(old)


def load_any_model(spec: str | Path) -> tuple[Encoder, object]:
    """(encoder, tokenizer) for ``--model PATH``: an HF model directory (config.json) or Hub id,
    an xelm weights directory (model.json), an expert's registry folder (weights/), or a run
    directory (its base)."""
    path = Path(spec)
    if not path.exists():
        path = resolve_model(spec)
    if is_hf_dir(path):
        model, tok, _ = load_hf(path)
        return model, tok
    run = RunDir(path)
    for weights in (path, path / "weights", run.base_model):
        if (weights / "model.json").is_file():
            return load_weights(weights, name=str(path)), _find_tokenizer(path)
    raise XelmError(f"{path} is neither a Hugging Face model directory (config.json) nor an xelm checkpoint "
                    "(model.json, an expert folder or a run directory)")


def _find_tokenizer(path: Path):
    """The tokenizer of an xelm checkpoint: its own, or the run directory's above it."""
    for d in [path, *list(path.absolute().parents)[:4]]:
        if (RunDir(d).tokenizer_dir / "tokenizer.json").is_file():
            return load_tokenizer(RunDir(d).tokenizer_dir)
    raise XelmError(f"no tokenizer for the checkpoint {path}: expected a tokenizer/ folder in it or in the "
                    "run directory above it")
