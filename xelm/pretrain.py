"""The base-encoder stage: tokenizer (trained if the run has none), tokenized corpus, training."""

from __future__ import annotations

from pathlib import Path

from xelm.batches import TokenizedCorpus
from xelm.config import RunConfig
from xelm.curriculum import stage_languages
from xelm.data import columns, load_corpus, texts_by_lang
from xelm.errors import XelmError
from xelm.files import write_json
from xelm.rundir import RunDir
from xelm.tokenizer import check_vocab_size, load_tokenizer, train_tokenizer
from xelm.train import train
from xelm.weights import save_weights


def training_languages(cfg: RunConfig, available: list[str]) -> list[str]:
    langs = list(cfg.data.languages) if cfg.data.languages is not None else sorted(available)
    langs = [lang for lang in langs if lang not in set(cfg.data.exclude_languages)]
    if not langs:
        raise XelmError("no training languages left: data.languages minus data.exclude_languages is empty")
    return langs


def ensure_tokenizer(cfg: RunConfig, run: RunDir, corpus, progress: bool = True):
    """The run's tokenizer, trained on the training languages the first time."""
    path = run.tokenizer_dir
    if not (path / "tokenizer.json").exists():
        tc = cfg.tokenizer
        train_tokenizer(texts_by_lang(corpus["train"]), tc.vocab_size, path, temperature=tc.temperature,
                        n_chars=tc.chars, seed=cfg.train.seed, show_progress=progress)
    tok = load_tokenizer(path)
    if len(tok) != cfg.model.vocab_size:
        raise XelmError(f"tokenizer at {path} has {len(tok)} tokens but model.vocab_size is "
                        f"{cfg.model.vocab_size}")
    return tok


def pretrain(cfg: RunConfig, run_dir: str | Path, max_steps: int | None = None, progress: bool = True) -> dict:
    """Train (or resume) the run's base encoder; returns a summary that is also saved."""
    run = RunDir(run_dir)
    if run.is_run() and run.base_summary_file.exists() and run.has_base():
        run.prepare(cfg)  # the same config, or a clear refusal
        summary = run.base_summary()
        if summary.get("complete"):
            summary.pop("tokens_by_lang", None)
            return {**summary, "skipped": True}
    # Everything the config names is checked before the run directory is created.
    full = load_corpus(cfg.data.corpus)
    langs = training_languages(cfg, sorted(set(full["train"]["lang"][:])))
    corpus = load_corpus(cfg.data.corpus, languages=langs)
    for stage in cfg.curriculum:
        stage_languages(stage, langs)
    if not (run.tokenizer_dir / "tokenizer.json").exists():
        check_vocab_size(cfg.tokenizer.vocab_size, "tokenizer.vocab_size")  # it trains after run.prepare
    run.prepare(cfg)
    tok = ensure_tokenizer(cfg, run, corpus, progress)
    train_split = corpus["train"]
    tokenized = TokenizedCorpus.from_texts(tok, *columns(train_split, "lang", "text"))
    result = train(cfg, tokenized, run.base_dir, mask_id=tok.mask_token_id, max_steps=max_steps,
                   progress=progress, desc="pretrain")
    if result.step >= cfg.train.steps:
        save_weights(result.model, run.base_model)
    plot = run.base_dir / "loss.png"  # not drawn from fewer than MIN_PLOTTED_LOGS logged steps
    summary = {"step": result.step, "steps": cfg.train.steps, "loss": result.loss, "tokens": result.tokens,
               "languages": len(langs), "resumed_from": result.resumed_from,
               "complete": result.step >= cfg.train.steps,
               "metrics": str(run.base_dir / "metrics.jsonl"), "plot": str(plot) if plot.is_file() else None}
    write_json(run.base_summary_file, {**summary, "tokens_by_lang": result.tokens_by_lang})
    return summary
