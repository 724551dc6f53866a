"""``xelm expert train|add|list|show|remove`` and ``xelm baseline``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def _line(card: dict) -> str:
    val = card.get("validation_loss")
    langs = card["languages"]
    shown = ",".join(langs[:8]) + (f",… ({len(langs)})" if len(langs) > 8 else "")
    return (f"{card['name']:<24}{card.get('parent', ''):<16}{card.get('tokens_trained', 0):>10,}"
            f"{'' if val is None else f'{val:>9.3f}':>9}  {shown}")


HEADER = f"{'name':<24}{'parent':<16}{'tokens':>10}{'val loss':>9}  languages"


def cmd_train(args) -> int:
    from experts.training import train_all, train_expert

    if args.all == bool(args.cluster):
        from xelm.errors import XelmError
        raise XelmError("give exactly one of --cluster NAME or --all")
    if args.all and args.jobs > 1:
        cards = train_parallel(args.run_dir, args.tokens, args.registry, args.jobs)
    elif args.all:
        cards = train_all(args.run_dir, args.tokens, args.registry, progress=not args.json)
    else:
        cards = [train_expert(args.run_dir, args.cluster, args.tokens, args.registry, progress=not args.json)]
    if args.json:
        _print_json(cards)
    else:
        print(HEADER)
        for c in cards:
            print(_line(c) + ("  (already registered)" if c.get("skipped") else ""))
    return 0


def train_parallel(run_dir: Path, tokens: int | None, registry: str | None, jobs: int) -> list[dict]:
    """Each cluster's expert as its own process, ``jobs`` at a time; logs in DIR/experts/<name>/."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from experts.training import load_plan, registry_of
    from xelm.errors import XelmError

    def one(name: str) -> tuple[str, int]:
        log = Path(run_dir) / "experts" / name / "train.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "xelm", "expert", "train", "--run-dir", str(run_dir), "--cluster", name,
               *(["--tokens", str(tokens)] if tokens else []), *(["--registry", registry] if registry else [])]
        with open(log, "w") as f:
            return name, subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode

    names = list(load_plan(run_dir)["clusters"])
    with ThreadPoolExecutor(jobs) as pool:
        failed = [(n, rc) for n, rc in pool.map(one, names) if rc != 0]
    if failed:
        raise XelmError("expert job(s) failed: " + ", ".join(
            f"{n} (exit {rc}, log {Path(run_dir) / 'experts' / n / 'train.log'})" for n, rc in failed))
    reg = registry_of(run_dir, registry)
    return [reg.card(n) for n in names]


def cmd_add(args) -> int:
    from experts.training import add_language

    card = add_language(args.run_dir, args.languages, args.tokens, args.parent, args.name, args.corpus,
                        args.registry, progress=not args.json)
    if args.json:
        _print_json(card)
    else:
        how = (f"nearest expert by typology: {card['parent']} (distance {card['parent_distance']:.3f})"
               if card.get("parent_distance") is not None else f"parent: {card['parent']}")
        print(f"registered {card['name']} for {','.join(card['languages'])}; {how}")
        print(HEADER)
        print(_line(card))
    return 0


def cmd_list(args) -> int:
    from experts.training import registry_of

    reg = registry_of(args.run_dir, args.registry)
    if args.repair:
        names = reg.repair()
        if not args.json:
            print(f"index rebuilt from {len(names)} expert folder(s)")
    cards = reg.cards()
    if args.json:
        _print_json(cards)
        return 0
    print(HEADER)
    for c in cards:
        print(_line(c))
    return 0


def cmd_show(args) -> int:
    from experts.training import registry_of

    card = registry_of(args.run_dir, args.registry).card(args.name)
    if args.json:
        _print_json(card)
    else:
        for k, v in card.items():
            if k not in ("typology_centroid", "config", "tokens_by_lang"):
                print(f"{k:<18}{v}")
    return 0


def cmd_remove(args) -> int:
    from experts.training import registry_of

    registry_of(args.run_dir, args.registry).remove(args.name)
    print(json.dumps({"removed": args.name}) if args.json else f"removed expert {args.name}")
    return 0


def cmd_baseline(args) -> int:
    from experts.training import train_baseline

    s = train_baseline(args.run_dir, args.registry, progress=not args.json)
    if args.json:
        _print_json(s)
    else:
        print(f"dense baseline: {s['tokens_trained']:,} tokens (experts: {sum(s['expert_tokens'].values()):,}) "
              f"on {len(s['languages'])} languages; validation loss {s['validation_loss']:.3f}")
    return 0


def register(sub) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--run-dir", type=Path, required=True)
        p.add_argument("--registry", help="registry path (default DIR/registry; gs:// etc. through etils.epath)")
        p.add_argument("--json", action="store_true")

    ex = sub.add_parser("expert", help="train, add, list, show and remove experts").add_subparsers(
        dest="expert_command", required=True)
    p = ex.add_parser("train", help="branch the base and train a cluster's expert (or --all)")
    common(p)
    p.add_argument("--cluster", help="a cluster name from DIR/clusters.json")
    p.add_argument("--all", action="store_true", help="every cluster, one after another")
    p.add_argument("--tokens", type=int, help="token budget per expert (default: experts.tokens)")
    p.add_argument("--jobs", type=int, default=1, help="with --all: train this many experts at once, "
                   "each in its own process")
    p.set_defaults(func=cmd_train)
    p = ex.add_parser("add", help="add an expert for new languages without retraining others (HMR)")
    common(p)
    p.add_argument("--languages", required=True, help="comma-separated ISO 639-3 codes")
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--parent", default="auto", help="auto (typologically nearest expert), base, or a name")
    p.add_argument("--name")
    p.add_argument("--corpus", help="corpus with the new languages' text (default: the run's)")
    p.set_defaults(func=cmd_add)
    p = ex.add_parser("list", help="the registered experts")
    common(p)
    p.add_argument("--repair", action="store_true", help="rebuild a damaged index from the expert folders")
    p.set_defaults(func=cmd_list)
    for verb, fn, text in (("show", cmd_show, "one expert's card"), ("remove", cmd_remove, "delete an expert")):
        p = ex.add_parser(verb, help=text)
        p.add_argument("name")
        common(p)
        p.set_defaults(func=fn)
    p = sub.add_parser("baseline", help="train the equal-compute dense baseline")
    common(p)
    p.set_defaults(func=cmd_baseline)
