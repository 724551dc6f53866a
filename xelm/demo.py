"""``xelm demo``: the main job on the embedded corpus, every stage skipped once complete."""

from __future__ import annotations

import json
import time
from pathlib import Path

from xelm.config import load_config
from xelm.data import corpus_stats, load_corpus
from xelm.errors import XelmError
from xelm.pretrain import pretrain

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "udhr-demo.yaml"


def run_demo(config: str | Path | None, run_dir: str | Path, overrides: list[str] = (),
             progress: bool = True) -> dict:
    config = Path(config) if config else DEFAULT_CONFIG
    if not config.is_file():
        raise XelmError(f"demo config {config} not found: pass --config FILE")
    cfg = load_config(config, overrides)
    run_dir = Path(run_dir)
    say = print if progress else (lambda *a, **k: None)
    t0 = time.perf_counter()

    stats = corpus_stats(load_corpus(cfg.data.corpus))
    say(f"[1/2] corpus {cfg.data.corpus}: {len(stats['languages'])} languages, "
        f"{stats['splits']['train']['characters']:,} training characters")

    say("[2/2] tokenizer and base encoder (pre-training with the mmBERT curriculum)")
    base = pretrain(cfg, run_dir, progress=progress)
    say(f"      base: loss {base['loss']:.3f}, {base['tokens']:,} tokens, {base['languages']} languages"
        + (f" (resumed from step {base['resumed_from']})" if base["resumed_from"] else ""))

    summary = {"run_dir": str(run_dir), "corpus": {"languages": len(stats["languages"])}, "base": base,
               "seconds": round(time.perf_counter() - t0, 1)}
    (run_dir / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    say(f"done in {summary['seconds']:.0f} s; run directory {run_dir} "
        f"(config.yaml, tokenizer/, base/metrics.jsonl, base/loss.png)")
    return summary
