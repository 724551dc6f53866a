"""``xelm data``, ``tokenizer``, ``pretrain``, ``evaluate`` and ``demo``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from xelm.app.console import interactive, print_json
from xelm.config import apply_overrides, check_seed, from_dict, load_config, to_dict
from xelm.data import columns, corpus_stats, load_corpus, texts_by_lang
from xelm.errors import XelmError
from xelm.pretrain import pretrain
from xelm.rundir import RunDir
from xelm.tokenizer import load_tokenizer, plot_fertility, tokenizer_stats, train_tokenizer
from xelm.train import MIN_PLOTTED_LOGS


def cmd_data_stats(args) -> int:
    stats = corpus_stats(load_corpus(args.corpus))
    if args.json:
        print_json(stats)
        return 0
    print(f"corpus {args.corpus}: {len(stats['languages'])} languages, "
          f"{stats['declarations']} orthographies/varieties")
    print(f"{'split':<12}{'rows':>8}{'languages':>11}{'characters':>13}{'words':>11}")
    for name, s in stats["splits"].items():
        print(f"{name:<12}{s['rows']:>8}{s['languages']:>11}{s['characters']:>13,}{s['words']:>11,}")
    print("scripts: " + ", ".join(f"{k} {v}" for k, v in stats["scripts"].items()))
    return 0


def cmd_tokenizer_train(args) -> int:
    check_seed(args.seed, "--seed")
    corpus = load_corpus(args.corpus)
    if not len(corpus["train"]):
        raise XelmError(f"corpus {args.corpus!r} has no train split to train a tokenizer on")
    texts = texts_by_lang(corpus["train"])
    if interactive(args):  # the sampling before the trainer's own bar takes a while: say what runs
        print(f"training a {args.vocab_size:,}-piece Unigram tokenizer on ~{args.chars:,} characters sampled from "
              f"{len(texts)} languages (τ = {args.temperature})...", file=sys.stderr, flush=True)
    tok = train_tokenizer(texts, args.vocab_size, args.out,
                          temperature=args.temperature, n_chars=args.chars, seed=args.seed,
                          show_progress=interactive(args), overwrite=args.overwrite)
    result = {"out": str(args.out), "vocab_size": len(tok), "corpus": args.corpus}
    print_json(result) if args.json else print(f"tokenizer saved to {args.out}")
    return 0


def cmd_tokenizer_stats(args) -> int:
    tok = load_tokenizer(args.dir)
    split = load_corpus(args.corpus)[args.split]
    if not len(split):
        raise XelmError(f"corpus {args.corpus!r} has no {args.split} split: choose another with --split")
    stats = tokenizer_stats(tok, *columns(split, "text", "lang", "script"), progress=interactive(args))
    plot = plot_fertility(stats, Path(args.dir) / "fertility_by_script.png")
    worst = max(stats, key=lambda k: stats[k]["unk_rate"])
    summary = {
        "languages": len(stats),
        "mean_tokens_per_word": float(np.mean([s["tokens_per_word"] for s in stats.values()])),
        "max_unk_rate": stats[worst]["unk_rate"],
        "max_unk_language": worst if stats[worst]["unk_rate"] > 0 else None,
        "mean_byte_rate": float(np.mean([s["byte_rate"] for s in stats.values()])),
        "plot": str(plot),
    }
    if args.json:
        print_json({"summary": summary, "per_language": stats})
        return 0
    print(f"{'lang':<6}{'script':<7}{'tok/word':>9}{'tok/char':>9}{'unk':>8}{'bytes':>8}")
    for lang, s in sorted(stats.items(), key=lambda kv: -kv[1]["tokens_per_char"]):
        print(f"{lang:<6}{s['script']:<7}{s['tokens_per_word']:>9.2f}{s['tokens_per_char']:>9.3f}"
              f"{s['unk_rate']:>8.2%}{s['byte_rate']:>8.2%}")
    print(f"{summary['languages']} languages; mean {summary['mean_tokens_per_word']:.2f} tokens/word; "
          f"max unknown rate {summary['max_unk_rate']:.2%} ({summary['max_unk_language'] or 'none'}); plot: {plot}")
    return 0


def run_config(args):
    """``--config`` with overrides, or (resuming) the run directory's own config with them."""
    run = RunDir(args.run_dir) if args.run_dir else None
    if args.config is None and run is not None and run.is_run():
        return from_dict(apply_overrides(to_dict(run.config()), args.overrides))
    return load_config(args.config, args.overrides)


def cmd_pretrain(args) -> int:
    summary = pretrain(run_config(args), args.run_dir, max_steps=args.max_steps, progress=not args.json)
    if args.json:
        print_json(summary)
    else:
        state = "complete" if summary["complete"] else f"stopped at step {summary['step']} (re-run to resume)"
        plot = summary.get("plot") or (f"none (a curve needs {MIN_PLOTTED_LOGS} logged steps; "
                                       "a smaller train.log_every logs more)")
        print(f"base encoder {state}: loss {summary['loss']:.3f} after {summary['tokens']:,} tokens "
              f"on {summary['languages']} languages; metrics {summary['metrics']}, plot {plot}")
    return 0
