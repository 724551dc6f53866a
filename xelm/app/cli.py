"""The ``xelm`` command line: one verb per stage; a user's mistake is one line on stderr.

This module holds the arguments only, so ``xelm --help`` starts fast: each verb names its
handler as ``"module:function"``, imported when the verb runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from pathlib import Path

from xelm import __version__
from xelm.compilecache import enable_compilation_cache
from xelm.errors import XelmError
from xelm.faults import clean_temporaries, describe_os_error, device_error, quiet_library_threads

ROUTER_HELP = "language (needs --lang) | tfidf | posterior | langid; default: language with --lang, else tfidf"


class Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake answered in one line (subcommands inherit the class)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _verb(sub, name: str, handler: str, help: str, **kw) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, **kw)
    p.set_defaults(func=handler)
    return p


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _data_and_tokenizer(sub) -> None:
    data = sub.add_parser("data", help="corpora").add_subparsers(dest="data_command", required=True)
    s = _verb(data, "stats", "xelm.app.cmd_core:cmd_data_stats", "languages, rows, characters and words per split")
    s.add_argument("--corpus", default="udhr", help="udhr, a directory, or hf:NAME (default: udhr)")
    _json(s)

    tok = sub.add_parser("tokenizer", help="train and inspect tokenizers").add_subparsers(
        dest="tokenizer_command", required=True)
    s = _verb(tok, "train", "xelm.app.cmd_core:cmd_tokenizer_train", "train a language-balanced Unigram tokenizer")
    s.add_argument("--corpus", default="udhr")
    s.add_argument("--vocab-size", type=int, default=16384)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--temperature", type=float, default=0.3,
                   help="language sampling exponent τ, p_l ∝ n_l^τ (1: as the data, ->0: uniform)")
    s.add_argument("--chars", type=int, default=2_000_000, help="characters of sampled training text")
    s.add_argument("--seed", type=int, default=0, help="sampling seed, 0 to 2**32 - 1 (default 0)")
    s.add_argument("--overwrite", action="store_true",
                   help="write into a folder holding files xelm did not write (replaces its tokenizer files)")
    _json(s)
    s = _verb(tok, "stats", "xelm.app.cmd_core:cmd_tokenizer_stats",
              "fertility and unknown-token rate per language, plot by script")
    s.add_argument("dir", type=Path)
    s.add_argument("--corpus", default="udhr")
    s.add_argument("--split", default="test", choices=["train", "validation", "test"])
    _json(s)


def _pretrain(sub) -> None:
    s = _verb(sub, "pretrain", "xelm.app.cmd_core:cmd_pretrain",
              "pre-train the base encoder with the mmBERT curriculum (resumes)")
    s.add_argument("--config", type=Path, help="YAML config (default: the run directory's own, to resume)")
    s.add_argument("--run-dir", type=Path, required=True)
    s.add_argument("--max-steps", type=int, help="stop after this step (the schedule still spans train.steps)")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.steps=50")
    _json(s)


def _cluster(sub) -> None:
    p = _verb(sub, "cluster", "xelm.app.cmd_cluster:cmd_cluster",
              "group languages for experts by typology, TF-IDF or the model's geometry",
              description="Write a cluster plan {method, k, clusters: {name: [iso, ...]}, fallbacks, ...}. "
                          "Languages come from --languages, --corpus, or the run directory's config.")
    p.add_argument("--languages", help="comma-separated language codes (ISO 639-3, 639-1 or BCP-47), e.g. "
                                       "fra,spa,rus (texts, when needed, from --corpus, default the embedded UDHR)")
    p.add_argument("--family", metavar="NAME", help="the corpus languages of a family or branch (URIEL/Glottolog), "
                                                    "e.g. Romance or Bantu; comma-separate several")
    p.add_argument("--corpus", help="udhr, a directory, or hf:NAME: every language of its train split "
                                    "(or of --languages/--family)")
    p.add_argument("--run-dir", type=Path, help="write DIR/clusters.json with plots beside it; languages "
                                                "from DIR/config.yaml unless --languages/--corpus is given")
    p.add_argument("--method", choices=("typology", "tfidf", "model"), default="typology")
    p.add_argument("--k", type=int, required=True, help="number of clusters (experts)")
    p.add_argument("--balanced", action="store_true", default=None,
                   help="even out the clusters' shares of training text (characters of the train split); "
                        "with --run-dir the config's experts.balanced is the default")
    p.add_argument("--features", help="typology feature sets and weights: syntax_knn,fam,geo (equal) or "
                                      "syntax_knn:0.5,fam:0.5 (sets: syntax_knn, phonology_knn, inventory_knn, "
                                      "fam, geo; default: the config's, else syntax .3 fam .3 geo .2 phon .1 inv .1)")
    p.add_argument("--by-script", action="store_true", default=None,
                   help="keep languages of different main scripts in different clusters (when k allows)")
    p.add_argument("--out", type=Path, help="plan file (default with --run-dir: DIR/clusters.json); "
                                            "plots and the TF-IDF space go beside it")
    p.add_argument("--seed", type=int, default=0)
    _json(p)


def _experts(sub) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--run-dir", type=Path, required=True)
        p.add_argument("--registry", help="registry path (default DIR/registry; gs:// etc. through etils.epath)")
        _json(p)

    ex = sub.add_parser("expert", help="train, add, list, show and remove experts").add_subparsers(
        dest="expert_command", required=True)
    p = _verb(ex, "train", "xelm.app.cmd_experts:cmd_train",
              "branch the base and train a cluster's expert (or --all), or a family's (--family)")
    common(p)
    p.add_argument("--cluster", help="a cluster name from DIR/clusters.json")
    p.add_argument("--all", action="store_true", help="every cluster, one after another")
    p.add_argument("--family", metavar="NAME", help="a language family or branch (URIEL/Glottolog), e.g. Romance "
                   "or Bantu (comma-separate several): one expert on its languages with text in the run's corpus, "
                   "branched from the base, outside the cluster plan (kind 'family')")
    p.add_argument("--name", help="with --family: the expert's name (default family-<name>)")
    p.add_argument("--tokens", type=int, help="token budget per expert (default: experts.tokens)")
    p.add_argument("--jobs", type=int, default=1, help="with --all: train this many experts at once, "
                   "each in its own process")
    p = _verb(ex, "add", "xelm.app.cmd_experts:cmd_add",
              "add an expert for new languages without retraining others (HMR)")
    common(p)
    p.add_argument("--languages", help="comma-separated codes: ISO 639-3 (ita), ISO 639-1 (it) or BCP-47 (pt-BR)")
    p.add_argument("--family", metavar="NAME", help="a language family or branch (URIEL/Glottolog), e.g. "
                                                    "Bantu, Romance, Turkic: its languages with text in the corpus")
    p.add_argument("--tokens", type=int, required=True, help="token budget (rounded up to whole batches)")
    p.add_argument("--parent", default="auto", help="auto (typologically nearest expert), base, or a name")
    p.add_argument("--name")
    p.add_argument("--corpus", help="corpus with the new languages' text (default: the run's)")
    p = _verb(ex, "list", "xelm.app.cmd_experts:cmd_list", "the registered experts")
    common(p)
    p.add_argument("--repair", action="store_true", help="rebuild a damaged index from the expert folders")
    for verb, text in (("show", "one expert's card"), ("remove", "delete an expert")):
        p = _verb(ex, verb, f"xelm.app.cmd_experts:cmd_{verb}", text)
        p.add_argument("name")
        common(p)
    p = _verb(sub, "baseline", "xelm.app.cmd_experts:cmd_baseline", "train the equal-compute dense baseline")
    common(p)


def _routing(sub) -> None:
    """One rule per concept in every verb: --experts K (experts kept), --top-k K (tokens listed,
    fill-mask only, as in transformers), --text/--file/- in, --json/--jsonl/--out out."""
    def common(p: argparse.ArgumentParser, single: bool = False) -> None:
        p.add_argument("--run-dir", type=Path, required=not single, help="the run whose experts answer"
                       + (" (or give --model)" if single else ""))
        if single:
            p.add_argument("--model", help="one model instead of a run's experts: an HF directory or Hub id, "
                                           "an xelm checkpoint, an expert's registry folder")
        p.add_argument("--registry", help="registry path (default DIR/registry)")
        p.add_argument("--text", action="append", help="a text (repeat for several; '-' reads stdin, one per line)")
        p.add_argument("--file", metavar="PATH", help="texts, one per line, or JSONL with \"text\" and optional "
                                                      "\"lang\" ('-': stdin)")
        p.add_argument("--router", help=ROUTER_HELP)
        p.add_argument("--lang", help="the texts' language: ISO 639-3, ISO 639-1 or BCP-47 (the language router)")
        p.add_argument("--experts", type=int, metavar="K", help="keep the K best experts per text (renormalised)")
        p.add_argument("--temperature", type=float, default=0.1, help="TF-IDF router temperature T in "
                                                                       "softmax(-d²/T) (default 0.1)")
        p.add_argument("--prior", default="uniform", help="posterior router prior: uniform | validation")
        _json(p)
        p.add_argument("--jsonl", action="store_true", help="one JSON object per text and line, in input order")

    def renamed_top_k(p: argparse.ArgumentParser) -> None:
        p.add_argument("--top-k", dest="old_top_k", type=int, help=argparse.SUPPRESS)

    p = _verb(sub, "route", "xelm.app.cmd_routing:cmd_route", "which experts each text goes to, and with what weight")
    common(p)
    renamed_top_k(p)
    p.add_argument("--out", type=Path, help="write the results to FILE.jsonl")

    p = _verb(sub, "score", "xelm.app.cmd_routing:cmd_score",
              "masked-LM loss per text under the routed mixture (nats per masked token)")
    common(p)
    renamed_top_k(p)
    p.add_argument("--out", type=Path, help="write the results to FILE.jsonl")

    p = _verb(sub, "fill-mask", "xelm.app.cmd_routing:cmd_fill_mask",
              "predict the <mask> tokens with the routed mixture of experts")
    common(p, single=True)
    p.add_argument("--top-k", type=int, default=5, help="tokens to list per <mask> (default 5)")
    p.add_argument("--out", type=Path, help="write the results to FILE.jsonl")

    p = _verb(sub, "embed", "xelm.app.cmd_routing:cmd_embed", "sentence embeddings: the routed experts' weighted mean")
    common(p, single=True)
    renamed_top_k(p)
    p.add_argument("--out", type=Path, help="write the vectors to FILE.npy ([texts, dim] float32), or the "
                                            "results to FILE.jsonl")


def _serve(sub) -> None:
    p = _verb(sub, "serve", "xelm.app.serve:cmd_serve",
              "route and ensemble over HTTP: batched, picks up registry changes while it runs")
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--registry", help="registry path (default DIR/registry)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port, printed)")
    p.add_argument("--max-batch-tokens", type=int, default=8192,
                   help="tokens per engine batch (default 8192); a request with more is refused (413)")
    p.add_argument("--max-queue", type=int, default=256, help="requests waiting at most (default 256); more get 503")
    p.add_argument("--max-texts", type=int, default=256, help="texts per request at most (default 256)")
    p.add_argument("--max-body-kb", type=int, default=1024,
                   help="request body size at most, in KiB (default 1024); a larger one is refused (413)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="an idle engine waits this long for concurrent requests to batch (default 5)")
    p.add_argument("--watch-interval", type=float, default=1.0,
                   help="seconds between looks at the registry's index (default 1)")
    p.add_argument("--temperature", type=float, default=0.1, help="default TF-IDF router temperature (0.1)")
    p.add_argument("--prior", default="uniform", help="posterior router prior: uniform | validation")
    p.add_argument("--no-warm-up", action="store_true",
                   help="ready once the experts are loaded, compiling each batch shape on its first request "
                        "(starts in seconds; the first requests of each shape are slow): for development")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="on SIGTERM, seconds to finish in-flight requests (default 30)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])


def _hf(sub) -> None:
    p = _verb(sub, "import-hf", "xelm.app.cmd_hf:cmd_import",
              "make a Hugging Face checkpoint (BERT, XLM-R, ModernBERT) a run's base encoder")
    p.add_argument("path", help="HF model directory (config.json, weights, tokenizer files), or a Hub id "
                                "such as FacebookAI/xlm-roberta-base (downloaded to the HF cache when online)")
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides for later stages, e.g. experts.k=4 data.seq_len=256")
    _json(p)

    p = _verb(sub, "export-hf", "xelm.app.cmd_hf:cmd_export",
              "write an expert (or any checkpoint) as a transformers model directory")
    p.add_argument("--model", help="an xelm checkpoint, expert folder, run directory, HF directory or Hub id")
    p.add_argument("--run-dir", type=Path)
    p.add_argument("--expert", help="the expert to export (default: the run's base)")
    p.add_argument("--registry", help="registry path (default DIR/registry)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty folder that is not an earlier export (replaces its files)")
    _json(p)


def _evaluate_and_demo(sub) -> None:
    s = _verb(sub, "evaluate", "xelm.app.evaluate:cmd_evaluate",
              "per-language held-out loss, transfer, routing; writes DIR/report/")
    s.add_argument("--run-dir", type=Path, required=True)
    s.add_argument("--split", choices=("test", "validation"), default="test",
                   help="validation chooses configurations (DIR/report-validation/); test only reports (default)")
    _json(s)

    s = _verb(sub, "demo", "xelm.app.demo:cmd_demo", "the main job: every stage on the embedded corpus, resumable")
    s.add_argument("--config", type=Path, default=None, help="default: the packaged configs/udhr-demo.yaml")
    s.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    s.add_argument("--base-from", type=Path, metavar="RUN",
                   help="start a new run from RUN's tokenizer and base (configs may differ only in experts.*)")
    s.add_argument("overrides", nargs="*", metavar="key=value")
    _json(s)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="xelm", description="Cross-lingual expert language models (X-ELM) in JAX.")
    p.add_argument("--version", action="version", version=f"xelm {__version__}")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_data_and_tokenizer, _pretrain, _cluster, _experts, _routing, _serve, _hf,
                _evaluate_and_demo):
        add(sub)
    return p


def dispatch(args: argparse.Namespace) -> int:
    """Run the verb ``args`` names: its module is imported now, not at start-up."""
    module, name = args.func.split(":")
    return getattr(importlib.import_module(module), name)(args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """As argparse, except that ``key=value`` overrides may come anywhere on the line (before or
    after the options) in every verb that takes them, as they do in ``pretrain``."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if isinstance(getattr(args, "overrides", None), list) and all(
                "=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error("unrecognized arguments: " + " ".join(extra))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if argv is None:  # the real command line: compiled programs are kept for its next run
        enable_compilation_cache()
    if argv is None and not args.debug and args.command != "serve":
        quiet_library_threads()
    code = _run(args)
    if argv is None and code:  # the real command line: this process is ours to end, at once after
        sys.stdout.flush()  # the error line, so that no library thread prints after it (Orbax's
        sys.stderr.flush()  # savers at interpreter shutdown)
        os._exit(code)
    return code


def _fail(args, message: str) -> int:
    """The one error line; temporary files this process left are removed first."""
    clean_temporaries()
    print("xelm: error: " + " ".join(message.split()), file=sys.stderr)  # one line, always
    return 2


def _run(args) -> int:
    try:
        return dispatch(args)
    except XelmError as e:
        if args.debug:
            traceback.print_exc()
        return _fail(args, str(e))
    except KeyboardInterrupt:
        print("xelm: interrupted (completed checkpoints are kept; re-run to resume)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `xelm ... --json | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # disk full, quota, read-only (also wrapped by a library), permission denied
        device = device_error(e)
        if device is None and not isinstance(e, OSError):
            raise
        if args.debug:
            traceback.print_exc()
        return _fail(args, describe_os_error(device or e))
