"""``xelm expert train|add|list|show|remove`` and ``xelm baseline``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from clustering.naming import slug
from experts.registry import check_name, run_registry
from experts.training import add_language, train_all, train_baseline, train_expert, train_family_expert
from xelm.app.console import print_json
from xelm.app.langargs import listed, note, resolve_languages, warn
from xelm.data import languages_with_text, load_corpus
from xelm.errors import XelmError
from xelm.rundir import RunDir


def _table(cards: list[dict], marks: dict[str, str] | None = None) -> list[str]:
    """The experts as aligned columns, as wide as their longest name and parent."""
    name_w = max([len("name"), *(len(c["name"]) for c in cards)]) + 2
    parent_w = max([len("parent"), *(len(str(c.get("parent", ""))) for c in cards)]) + 2
    lines = [f"{'name':<{name_w}}{'parent':<{parent_w}}{'tokens':>10}{'val loss':>10}  languages"]
    for c in cards:
        val, langs = c.get("validation_loss"), c["languages"]
        shown = ",".join(langs[:8]) + (f",… ({len(langs)})" if len(langs) > 8 else "")
        lines.append(f"{c['name']:<{name_w}}{str(c.get('parent', '')):<{parent_w}}{c.get('tokens_trained', 0):>10,}"
                     f"{'-' if val is None else f'{val:.3f}':>10}  {shown}" + (marks or {}).get(c["name"], ""))
    return lines


def _budget_notes(cards: list[dict], asked: int | None) -> None:
    """Say where the tokens trained differ from the budget asked (whole batches of batch_size x
    seq_len tokens) and where a card has no validation loss."""
    for c in cards:
        trained = c.get("tokens_trained", 0)
        if asked and trained != asked and not c.get("skipped"):
            note(f"{c['name']}: --tokens {asked:,} trained as {trained:,} tokens ({trained / asked - 1:+.1%}): "
                 "budgets are rounded up to whole batches (data.batch_size x data.seq_len tokens a step)")
        if c.get("validation_loss") is None and not c.get("skipped"):
            warn(f"{c['name']}: no validation text for {','.join(c['languages'])} in its corpus, so no validation "
                 "loss: give the corpus a validation split (a .jsonl or .parquet file with a split column)")


def cmd_train(args) -> int:
    if [bool(args.cluster), args.all, args.family is not None].count(True) != 1:
        raise XelmError("give exactly one of --cluster NAME, --all or --family NAME")
    if args.name is not None and args.family is None:
        raise XelmError("--name goes with --family: a cluster's expert is named after its cluster")
    if args.family is not None:
        cards = [_train_family(args)]
    elif args.all and args.jobs > 1:
        cards = train_parallel(args.run_dir, args.tokens, args.registry, args.jobs)
    elif args.all:
        cards = train_all(args.run_dir, args.tokens, args.registry, progress=not args.json)
    else:
        cards = [train_expert(args.run_dir, args.cluster, args.tokens, args.registry, progress=not args.json)]
    if args.json:
        print_json(cards)
    else:
        print("\n".join(_table(cards, {c["name"]: "  (already registered)" for c in cards if c.get("skipped")})))
    _budget_notes(cards, args.tokens or RunDir(args.run_dir).config().experts.tokens)
    return 0


def train_parallel(run_dir: Path, tokens: int | None, registry: str | None, jobs: int) -> list[dict]:
    """Each cluster's expert as its own process, ``jobs`` at a time; logs in DIR/experts/<name>/."""
    run = RunDir(run_dir)
    names = [check_name(n) for n in run.plan()["clusters"]]  # a plan's names become folder names

    def one(name: str) -> tuple[str, int]:
        log = run.expert_work(name) / "train.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "xelm", "expert", "train", "--run-dir", str(run_dir), "--cluster", name,
               *(["--tokens", str(tokens)] if tokens else []), *(["--registry", registry] if registry else [])]
        # N processes share the accelerator: none may take JAX's default 75% of its memory up front
        env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
        with open(log, "w") as f:
            return name, subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode

    with ThreadPoolExecutor(jobs) as pool:
        failed = [(n, rc) for n, rc in pool.map(one, names) if rc != 0]
    if failed:
        raise XelmError("expert job(s) failed: " + ", ".join(
            f"{n} (exit {rc}, log {run.expert_work(n) / 'train.log'})" for n, rc in failed))
    reg = run_registry(run_dir, registry)
    return [reg.card(n) for n in names]


def _train_family(args) -> dict:
    """``expert train --family``: the base trained on a family's corpus languages, outside the plan."""
    run = RunDir(args.run_dir)
    corpus = run.config().data.corpus
    langs = resolve_languages(None, args.family, _corpus_languages(corpus), corpus)
    name = args.name or f"family-{slug(args.family)}"
    before = run_registry(run, args.registry).cards()
    card = train_family_expert(args.run_dir, langs, args.tokens, name, args.family, args.registry,
                               progress=not args.json)
    if not card.get("skipped"):
        note(f"{card['name']} is a family expert (kind 'family'), outside the cluster plan: the equal-compute "
             "evaluation (cluster experts vs dense) leaves it out, the routers weigh it with the other experts")
        _covered_note(card, [c for c in before if c["name"] != card["name"]])
    return card


def _corpus_languages(corpus: str) -> set[str]:
    """The languages with training text in ``corpus``: those a ``--family`` may resolve to."""
    return languages_with_text(load_corpus(corpus)["train"])


def cmd_add(args) -> int:
    run = RunDir(args.run_dir)
    corpus = args.corpus or run.config().data.corpus
    available = _corpus_languages(corpus) if args.family else None
    langs = resolve_languages(args.languages, args.family, available, corpus)
    name = args.name or (f"hmr-{slug(args.family)}" if args.family and not args.languages else None)
    before = run_registry(run, args.registry).cards()
    card = add_language(args.run_dir, langs, args.tokens, args.parent, name, args.corpus,
                        args.registry, progress=not args.json)
    if args.json:
        print_json(card)
    else:
        print(f"registered {card['name']} for {','.join(card['languages'])}; {_parent_line(card, before)}")
        print("\n".join(_table([card])))
    _covered_note(card, before)
    _budget_notes([card], args.tokens)
    _repetition_warning(run, card, args.corpus or corpus)
    return 0


def _parent_line(card: dict, before: list[dict]) -> str:
    """Which expert the new one branched from, and why (an HMR parent is named as such)."""
    kinds = {c["name"]: c.get("kind", "cluster") for c in before}
    parent = card["parent"]
    kind = "the base encoder" if parent == "base" else f"{kinds.get(parent, 'an')} expert"
    if card.get("parent_distance") is None:
        return f"branched from {parent} ({kind}, as --parent asked)"
    return (f"branched from {parent} ({kind}): the typologically nearest expert, distance "
            f"{card['parent_distance']:.3f} (--parent NAME or --parent base chooses another)")


def _covered_note(card: dict, before: list[dict]) -> None:
    """Say which of the new expert's languages other experts already hold: one line per set of
    owners, so that a family of forty languages is a line or two, not forty."""
    held: dict[tuple[str, ...], list[str]] = {}
    for lang in card["languages"]:
        owners = tuple(c["name"] for c in before if lang in c["languages"])
        if owners:
            held.setdefault(owners, []).append(lang)
    for owners, langs in held.items():
        which = f"{langs[0]} was" if len(langs) == 1 else f"{len(langs)} of its languages ({listed(langs)}) were"
        note(f"{which} already in expert(s) {', '.join(owners)}: {card['name']} is one more expert for "
             f"{'it' if len(langs) == 1 else 'them'}; the language router now weighs them all "
             f"(`xelm expert remove {card['name']}` undoes it)")


REPEAT_WARN = 10  # a budget that reads the corpus more times than this mostly memorises it


def _repetition_warning(run: RunDir, card: dict, corpus: str) -> None:
    split = load_corpus(corpus, languages=card["languages"])["train"]
    have = sum(len(ids) for ids in run.tokenizer()(split["text"][:], add_special_tokens=False)["input_ids"])
    trained = card.get("tokens_trained", 0)
    if have and trained > REPEAT_WARN * have:
        warn(f"{card['name']}: {trained:,} tokens trained from a corpus of {have:,} tokens ({corpus}): each text "
             f"seen about {trained / have:.0f} times, so the expert memorises it; give more text or fewer --tokens")


def cmd_list(args) -> int:
    reg = run_registry(args.run_dir, args.registry)
    if args.repair:
        names = reg.repair()
        if not args.json:
            print(f"index rebuilt from {len(names)} expert folder(s)")
    cards = reg.cards()
    if args.json:
        print_json(cards)
        return 0
    print("\n".join(_table(cards)))
    return 0


def cmd_show(args) -> int:
    card = run_registry(args.run_dir, args.registry).card(args.name)
    if args.json:
        print_json(card)
    else:
        for k, v in card.items():
            if k not in ("typology_centroid", "config", "tokens_by_lang"):
                print(f"{k:<18}{v}")
    return 0


def cmd_remove(args) -> int:
    run_registry(args.run_dir, args.registry).remove(args.name)
    print(json.dumps({"removed": args.name}) if args.json else f"removed expert {args.name}")
    return 0


def cmd_baseline(args) -> int:
    s = train_baseline(args.run_dir, args.registry, progress=not args.json)
    if args.json:
        print_json(s)
    else:
        loss = s["validation_loss"]  # None: the corpus has no validation text in these languages
        print(f"dense baseline: {s['tokens_trained']:,} tokens (experts: {sum(s['expert_tokens'].values()):,}) "
              f"on {len(s['languages'])} languages; validation loss {'n/a' if loss is None else f'{loss:.3f}'}")
    return 0
