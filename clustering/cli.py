"""``xelm cluster``: write a cluster plan (which languages share an expert) and its plots.

``register(subparsers)`` adds the verb to the main parser; ``cmd_cluster`` raises XelmError for
user mistakes, which the main CLI prints as one line.
"""

from __future__ import annotations

import argparse
import json
from functools import lru_cache
from pathlib import Path

from clustering.planning import METHODS, make_plan, write_plan
from xelm.errors import XelmError


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "cluster", help="group languages for experts by typology, TF-IDF or the model's geometry",
        description="Write a cluster plan {method, k, clusters: {name: [iso, ...]}, fallbacks, ...}. "
                    "Languages come from --languages, --corpus, or the run directory's config.")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--languages", help="comma-separated ISO 639-3 codes, e.g. fra,spa,rus "
                                            "(texts, when needed, from the embedded UDHR)")
    source.add_argument("--corpus", help="udhr, a directory, or hf:NAME: every language of its train split")
    p.add_argument("--run-dir", type=Path, help="write DIR/clusters.json with plots beside it; languages "
                                                "from DIR/config.yaml unless --languages/--corpus is given")
    p.add_argument("--method", choices=METHODS, default="typology")
    p.add_argument("--k", type=int, required=True, help="number of clusters (experts)")
    p.add_argument("--balanced", action="store_true",
                   help="even out the clusters' shares of training text (characters of the train split)")
    p.add_argument("--out", type=Path, help="plan file (default with --run-dir: DIR/clusters.json); "
                                            "plots and the TF-IDF space go beside it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_cluster)
    return p


def cmd_cluster(args) -> int:
    languages, corpus, held_out = _languages_and_corpus(args)
    needs_texts = _needs_texts(args)
    result = build_plan(languages, corpus, args.method, args.k, args.balanced, args.seed, args.run_dir,
                        needs_texts)
    if held_out:
        result.plan["held_out"] = sorted(held_out)
    out = args.out or (args.run_dir / "clusters.json" if args.run_dir else None)
    written = write_plan(result, out) if out else {}
    if args.json:
        print(json.dumps(result.plan, indent=2, ensure_ascii=False))
        return 0
    plan = result.plan
    print(f"{plan['method']} plan: {plan['languages']} languages in {len(plan['clusters'])} clusters"
          + (f" -> {out}" if out else ""))
    for name, members in plan["clusters"].items():
        shown = " ".join(members[:12]) + (" ..." if len(members) > 12 else "")
        count = f"{len(members)} language" + ("s" if len(members) != 1 else "")
        print(f"  {name:<32}{count:>14} {plan['shares'][name]:>7.1%}  {shown}")
    for lang, reason in plan["fallbacks"].items():
        print(f"  fallback {lang}: {reason}")
    if "agreement_with_typology" in plan:
        print(f"  agreement with typology (adjusted Rand index): "
              f"{plan['agreement_with_typology']['adjusted_rand_index']:.3f}")
    for kind, path in written.items():
        if kind != "plan":
            print(f"  {kind}: {path}")
    return 0


def build_plan(languages: list[str], corpus: str, method: str, k: int, balanced: bool = False, seed: int = 0,
               run_dir: Path | None = None, needs_texts: bool = True):
    """The plan for ``languages`` of ``corpus``: texts for TF-IDF, balancing and fallbacks come
    from the train split; the model method embeds held-out (validation) text."""
    split = _corpus_split(corpus, languages, "train") if needs_texts else {}
    sizes = None
    if balanced and split and all(split.get(lang) for lang in languages):
        sizes = {lang: sum(len(t) for t in split[lang]) for lang in languages}
    embeddings = None
    if method == "model":
        held = _corpus_split(corpus, languages, "validation")
        train = split or _corpus_split(corpus, languages, "train")
        held.update({lang: train[lang] for lang in languages if lang not in held and lang in train})
        embeddings = encoder_embeddings(run_dir, held)
    result = make_plan(languages, method, k, texts_by_lang=split, sizes=sizes, embeddings=embeddings,
                       balanced=balanced, seed=seed)
    result.plan["corpus"] = corpus
    if sizes is not None:
        result.plan["sizes"] = "characters of the train split"
    return result


def _needs_texts(args) -> bool:
    """TF-IDF, balancing and fallbacks need text; a plain typology plan of known codes does not."""
    return args.method != "typology" or args.balanced or not args.languages or _lacks_uriel(args.languages)


def _lacks_uriel(codes: str) -> bool:
    from clustering import uriel

    return any(not uriel.has_uriel(c.strip()) for c in codes.split(",") if c.strip())


def _languages_and_corpus(args) -> tuple[list[str], str, list[str]]:
    """Languages to cluster, the corpus their texts come from, and those the run holds out."""
    if args.languages is not None:
        return [c.strip() for c in args.languages.split(",") if c.strip()], "udhr", []
    if args.corpus is None and args.run_dir is None:
        raise XelmError("say which languages to cluster: --languages iso,iso,..., --corpus SPEC or --run-dir DIR")
    held_out: list[str] = []
    chosen = None
    corpus = args.corpus
    if corpus is None:
        from xelm.rundir import load_run_config

        cfg = load_run_config(args.run_dir)
        corpus, chosen, held_out = cfg.data.corpus, cfg.data.languages, list(cfg.data.exclude_languages)
    languages = list(chosen) if chosen else sorted(set(_load_corpus(corpus)["train"]["lang"]))
    return [lang for lang in languages if lang not in held_out], corpus, held_out


def _corpus_split(corpus: str, languages: list[str], split: str) -> dict[str, list[str]]:
    """Texts per language of one split (languages the corpus lacks are simply absent)."""
    wanted = set(languages)
    texts: dict[str, list[str]] = {}
    data = _load_corpus(corpus)[split]
    for lang, text in zip(data["lang"], data["text"]):
        if lang in wanted:
            texts.setdefault(lang, []).append(text)
    return texts


@lru_cache(maxsize=2)
def _load_corpus(spec: str):
    from xelm.data import load_corpus

    return load_corpus(spec)


def encoder_embeddings(run_dir: Path | None, texts_by_lang: dict[str, list[str]]) -> dict:
    """Per-language mean-pooled embeddings from the run's base encoder (held-out text)."""
    if run_dir is None or not (Path(run_dir) / "base" / "model" / "model.json").is_file():
        where = f"{run_dir}/base" if run_dir else "a run directory's base/ (give --run-dir DIR)"
        raise XelmError(f"--method model needs the finished base encoder in {where}: train it with "
                        "`xelm pretrain --run-dir DIR` or import one with `xelm import-hf PATH --run-dir DIR`")
    from xelm.embed import language_embeddings
    from xelm.tokenizer import load_tokenizer
    from xelm.weights import load_weights

    model = load_weights(Path(run_dir) / "base" / "model", name="the base encoder")
    return language_embeddings(model, load_tokenizer(Path(run_dir) / "tokenizer"), texts_by_lang)
