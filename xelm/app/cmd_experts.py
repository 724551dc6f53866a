"""``xelm expert train|add|list|show|remove`` and ``xelm baseline``."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from experts.registry import check_name, run_registry
from experts.training import add_language, train_all, train_baseline, train_expert
from xelm.app.console import print_json
from xelm.errors import XelmError
from xelm.rundir import RunDir


def _line(card: dict) -> str:
    val = card.get("validation_loss")
    langs = card["languages"]
    shown = ",".join(langs[:8]) + (f",… ({len(langs)})" if len(langs) > 8 else "")
    return (f"{card['name']:<24}{card.get('parent', ''):<16}{card.get('tokens_trained', 0):>10,}"
            f"{'' if val is None else f'{val:>9.3f}':>9}  {shown}")


HEADER = f"{'name':<24}{'parent':<16}{'tokens':>10}{'val loss':>9}  languages"


def cmd_train(args) -> int:
    if args.all == bool(args.cluster):
        raise XelmError("give exactly one of --cluster NAME or --all")
    if args.all and args.jobs > 1:
        cards = train_parallel(args.run_dir, args.tokens, args.registry, args.jobs)
    elif args.all:
        cards = train_all(args.run_dir, args.tokens, args.registry, progress=not args.json)
    else:
        cards = [train_expert(args.run_dir, args.cluster, args.tokens, args.registry, progress=not args.json)]
    if args.json:
        print_json(cards)
    else:
        print(HEADER)
        for c in cards:
            print(_line(c) + ("  (already registered)" if c.get("skipped") else ""))
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
        with open(log, "w") as f:
            return name, subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode

    with ThreadPoolExecutor(jobs) as pool:
        failed = [(n, rc) for n, rc in pool.map(one, names) if rc != 0]
    if failed:
        raise XelmError("expert job(s) failed: " + ", ".join(
            f"{n} (exit {rc}, log {run.expert_work(n) / 'train.log'})" for n, rc in failed))
    reg = run_registry(run_dir, registry)
    return [reg.card(n) for n in names]


def cmd_add(args) -> int:
    card = add_language(args.run_dir, args.languages, args.tokens, args.parent, args.name, args.corpus,
                        args.registry, progress=not args.json)
    if args.json:
        print_json(card)
    else:
        how = (f"nearest expert by typology: {card['parent']} (distance {card['parent_distance']:.3f})"
               if card.get("parent_distance") is not None else f"parent: {card['parent']}")
        print(f"registered {card['name']} for {','.join(card['languages'])}; {how}")
        print(HEADER)
        print(_line(card))
    return 0


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
    print(HEADER)
    for c in cards:
        print(_line(c))
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
        print(f"dense baseline: {s['tokens_trained']:,} tokens (experts: {sum(s['expert_tokens'].values()):,}) "
              f"on {len(s['languages'])} languages; validation loss {s['validation_loss']:.3f}")
    return 0
