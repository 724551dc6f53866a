"""The ``xelm`` command line: one verb per stage; a user's mistake is one line on stderr."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from xelm.errors import XelmError


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


# ----------------------------------------------------------------------------- data
def cmd_data_stats(args) -> int:
    from xelm.data import corpus_stats, load_corpus

    stats = corpus_stats(load_corpus(args.corpus))
    if args.json:
        _print_json(stats)
        return 0
    print(f"corpus {args.corpus}: {len(stats['languages'])} languages, "
          f"{stats['declarations']} orthographies/varieties")
    print(f"{'split':<12}{'rows':>8}{'languages':>11}{'characters':>13}{'words':>11}")
    for name, s in stats["splits"].items():
        print(f"{name:<12}{s['rows']:>8}{s['languages']:>11}{s['characters']:>13,}{s['words']:>11,}")
    print("scripts: " + ", ".join(f"{k} {v}" for k, v in stats["scripts"].items()))
    return 0


# ------------------------------------------------------------------------ tokenizer
def cmd_tokenizer_train(args) -> int:
    from xelm.data import load_corpus, texts_by_lang
    from xelm.tokenizer import train_tokenizer

    corpus = load_corpus(args.corpus)
    if not len(corpus["train"]):
        raise XelmError(f"corpus {args.corpus!r} has no train split to train a tokenizer on")
    tok = train_tokenizer(texts_by_lang(corpus["train"]), args.vocab_size, args.out,
                          temperature=args.temperature, n_chars=args.chars, seed=args.seed,
                          show_progress=not args.json and sys.stderr.isatty())
    result = {"out": str(args.out), "vocab_size": len(tok), "corpus": args.corpus}
    _print_json(result) if args.json else print(f"tokenizer saved to {args.out}")
    return 0


def cmd_tokenizer_stats(args) -> int:
    import numpy as np

    from xelm.data import load_corpus
    from xelm.tokenizer import load_tokenizer, plot_fertility, tokenizer_stats

    tok = load_tokenizer(args.dir)
    split = load_corpus(args.corpus)[args.split]
    if not len(split):
        raise XelmError(f"corpus {args.corpus!r} has no {args.split} split: choose another with --split")
    stats = tokenizer_stats(tok, split["text"], split["lang"], split["script"])
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
        _print_json({"summary": summary, "per_language": stats})
        return 0
    print(f"{'lang':<6}{'script':<7}{'tok/word':>9}{'tok/char':>9}{'unk':>8}{'bytes':>8}")
    for lang, s in sorted(stats.items(), key=lambda kv: -kv[1]["tokens_per_char"]):
        print(f"{lang:<6}{s['script']:<7}{s['tokens_per_word']:>9.2f}{s['tokens_per_char']:>9.3f}"
              f"{s['unk_rate']:>8.2%}{s['byte_rate']:>8.2%}")
    print(f"{summary['languages']} languages; mean {summary['mean_tokens_per_word']:.2f} tokens/word; "
          f"max unknown rate {summary['max_unk_rate']:.2%} ({summary['max_unk_language'] or 'none'}); plot: {plot}")
    return 0


# ---------------------------------------------------------------------------- pretrain
def _run_config(args):
    from xelm.config import load_config
    from xelm.rundir import load_run_config

    if args.config is None and args.run_dir and (Path(args.run_dir) / "config.yaml").exists():
        if args.overrides:
            from xelm.config import apply_overrides, from_dict, to_dict
            return from_dict(apply_overrides(to_dict(load_run_config(args.run_dir)), args.overrides))
        return load_run_config(args.run_dir)
    return load_config(args.config, args.overrides)


def cmd_pretrain(args) -> int:
    from xelm.pretrain import pretrain

    cfg = _run_config(args)
    summary = pretrain(cfg, args.run_dir, max_steps=args.max_steps, progress=not args.json)
    if args.json:
        _print_json(summary)
    else:
        state = "complete" if summary["complete"] else f"stopped at step {summary['step']} (re-run to resume)"
        print(f"base encoder {state}: loss {summary['loss']:.3f} after {summary['tokens']:,} tokens "
              f"on {summary['languages']} languages; metrics {summary['metrics']}, plot {summary['plot']}")
    return 0


def cmd_evaluate(args) -> int:
    from xelm.evaluate import evaluate

    m = evaluate(args.run_dir, progress=not args.json)
    if args.json:
        _print_json(m)
        return 0
    s = m["summary"]
    print(f"X-ELM ({m['headline']['ensemble']}) beats the equal-compute dense model on "
          f"{s['improved_fraction']:.1%} of {s['languages']} languages; mean Δ loss {s['mean_delta_loss']:+.3f}")
    for name, loss in sorted(s["mean_loss"].items(), key=lambda kv: kv[1] or 9e9):
        print(f"  {name:<22}{loss:.3f}")
    print(f"report: {args.run_dir / 'report' / 'report.md'}")
    return 0


def cmd_demo(args) -> int:
    from xelm.demo import run_demo

    summary = run_demo(args.config, args.run_dir, args.overrides, progress=not args.json)
    if args.json:
        _print_json(summary)
    return 0


# ----------------------------------------------------------------------------- parser
class Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake answered in one line (subcommands inherit the class)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="xelm", description="Cross-lingual expert language models (X-ELM) in JAX.")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="corpora").add_subparsers(dest="data_command", required=True)
    s = data.add_parser("stats", help="languages, rows, characters and words per split")
    s.add_argument("--corpus", default="udhr", help="udhr, a directory, or hf:NAME (default: udhr)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_data_stats)

    tok = sub.add_parser("tokenizer", help="train and inspect tokenizers").add_subparsers(
        dest="tokenizer_command", required=True)
    s = tok.add_parser("train", help="train a language-balanced Unigram tokenizer")
    s.add_argument("--corpus", default="udhr")
    s.add_argument("--vocab-size", type=int, default=16384)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--temperature", type=float, default=0.3,
                   help="language sampling exponent τ, p_l ∝ n_l^τ (1: as the data, ->0: uniform)")
    s.add_argument("--chars", type=int, default=2_000_000, help="characters of sampled training text")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_tokenizer_train)
    s = tok.add_parser("stats", help="fertility and unknown-token rate per language, plot by script")
    s.add_argument("dir", type=Path)
    s.add_argument("--corpus", default="udhr")
    s.add_argument("--split", default="test", choices=["train", "validation", "test"])
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_tokenizer_stats)

    s = sub.add_parser("pretrain", help="pre-train the base encoder with the mmBERT curriculum (resumes)")
    s.add_argument("--config", type=Path, help="YAML config (default: the run directory's own, to resume)")
    s.add_argument("--run-dir", type=Path, required=True)
    s.add_argument("--max-steps", type=int, help="stop after this step (the schedule still spans train.steps)")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.steps=50")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_pretrain)

    from clustering.cli import register as register_cluster
    from experts.cli import register as register_experts
    register_cluster(sub)
    register_experts(sub)
    from routing.cli import register as register_routing
    register_routing(sub)
    from xelm.hf_cli import register as register_hf; register_hf(sub)  # noqa: E702 (import-hf, export-hf)

    s = sub.add_parser("evaluate", help="per-language held-out loss, transfer, routing; writes DIR/report/")
    s.add_argument("--run-dir", type=Path, required=True)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("demo", help="the main job: every stage on the embedded corpus, resumable")
    s.add_argument("--config", type=Path, default=None, help="default: configs/udhr-demo.yaml")
    s.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    s.add_argument("overrides", nargs="*", metavar="key=value")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except XelmError as e:
        if args.debug:
            traceback.print_exc()
        print("xelm: error: " + " ".join(str(e).split()), file=sys.stderr)  # one line, always
        return 2
    except KeyboardInterrupt:
        print("xelm: interrupted (completed checkpoints are kept; re-run to resume)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `xelm ... --json | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # permission denied, disk full, ...: name the file, no traceback
        if args.debug:
            traceback.print_exc()
        print(f"xelm: error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        return 2
