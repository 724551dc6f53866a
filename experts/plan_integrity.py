"""A run's plan, its cluster experts and its dense baseline must belong together.

Once experts exist the plan is fixed: an expert trained on another plan, or a dense baseline
that replayed other experts' batches, would turn "equal compute" into a comparison of two
different partitions. Each cluster card and the dense summary record the fingerprint of the
plan they were trained on; every stage that combines them checks it.
"""

from __future__ import annotations

import hashlib
import json

from xelm.data import columns, languages_with_text, load_corpus
from xelm.errors import XelmError
from xelm.rundir import RunDir


def plan_fingerprint(plan: dict) -> str:
    """A hash of the plan's partition (cluster names and their languages), nothing else."""
    clusters = {name: sorted(members) for name, members in sorted(plan["clusters"].items())}
    return hashlib.sha256(json.dumps(clusters, sort_keys=True).encode()).hexdigest()[:16]


def check_experts_match_plan(run: RunDir, plan: dict, cards: list[dict]) -> None:
    """Every registered cluster expert is a cluster of ``plan``, trained on its languages."""
    fp, wrong = plan_fingerprint(plan), []
    for c in cards:
        if c.get("kind") != "cluster":
            continue
        members = plan["clusters"].get(c["name"])
        if members is None:
            wrong.append(f"{c['name']} (no such cluster in the plan)")
        elif sorted(members) != sorted(c["languages"]):
            wrong.append(f"{c['name']} (trained on other languages than the plan's cluster)")
        elif c.get("plan_fingerprint") not in (None, fp):
            wrong.append(f"{c['name']} (trained on another plan)")
    if wrong:
        raise XelmError(f"the registry's cluster experts do not belong to {run.plan_file}: {'; '.join(wrong)}. "
                        "A run's plan is fixed once it has experts: restore the plan, or start a new --run-dir")


def check_dense_matches(run: RunDir, plan: dict, cards: list[dict], dense: dict) -> None:
    """The dense baseline was trained at the budget (and on the batches) of these experts."""
    experts = {c["name"]: c["tokens_trained"] for c in cards if c.get("kind") == "cluster"}
    if dense.get("expert_tokens") != experts or dense.get("plan_fingerprint") not in (None, plan_fingerprint(plan)):
        raise XelmError(f"the dense baseline in {run.baseline_dir} was trained for other experts or another plan "
                        f"than the registry's ({', '.join(sorted(experts))}): delete {run.baseline_dir} and run "
                        f"`xelm baseline --run-dir {run.root}`")


def plan_languages(run: RunDir | str) -> list[str]:
    """The languages a run's plan should cover: every language of the run's corpus with training
    text (or the config's ``data.languages``), except those held out for HMR."""
    return languages_to_plan(RunDir(run).config())


def languages_to_plan(cfg) -> list[str]:
    """:func:`plan_languages` of a run with config ``cfg``, before the run exists."""
    with_text = languages_with_text(load_corpus(cfg.data.corpus)["train"])
    chosen = set(cfg.data.languages) & with_text if cfg.data.languages else with_text
    return sorted(chosen - set(cfg.data.exclude_languages))


def coverage(run: RunDir, plan: dict) -> dict[str, str]:
    """Languages of the run's corpus that no cluster expert covers, each with the reason."""
    cfg = run.config()
    train = load_corpus(cfg.data.corpus)["train"]
    texts: dict[str, int] = {}
    for lang, text in zip(*columns(train, "lang", "text")):
        texts[lang] = texts.get(lang, 0) + len(text.strip())
    planned = {lang for members in plan["clusters"].values() for lang in members}
    reasons = {}
    for lang in sorted(texts):
        if lang in planned:
            continue
        if lang in cfg.data.exclude_languages:
            reasons[lang] = "held out of pre-training and the plan (added later by HMR)"
        elif cfg.data.languages and lang not in cfg.data.languages:
            reasons[lang] = "not among the config's data.languages"
        elif not texts[lang]:
            reasons[lang] = "no training text"
        else:
            reasons[lang] = "left out of the plan (the plan was built on fewer languages)"
    return reasons
