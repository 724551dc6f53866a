"""``xelm demo``: the main job on the embedded corpus, every stage skipped once complete.

corpus -> tokenizer -> base (mmBERT curriculum) -> cluster plan -> experts -> equal-compute
dense baseline -> HMR experts for the held-out languages -> evaluation report, with two yardsticks each at equal tokens
(an expert branched from the base, and the dense model continued on the language).
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from clustering.build import build_plan
from clustering.planning import write_plan
from clustering.typology import parse_features
from experts.plan_integrity import languages_to_plan
from experts.registry import run_registry
from experts.training import add_language, train_all, train_baseline, train_control
from xelm.app.console import interactive, print_json
from xelm.app.evaluate import evaluate
from xelm.app.report import headline_sentence
from xelm.app.stageclock import StageClock
from xelm.config import load_config
from xelm.data import corpus_stats, load_corpus
from xelm.errors import XelmError
from xelm.files import write_json
from xelm.pretrain import pretrain
from xelm.rundir import RunDir

DEFAULT_CONFIG = "udhr-demo"
STAGES = 7


def config_path(config: str | Path | None) -> Path:
    """A config file, or the name of one the package ships (``udhr-demo``, ``udhr-tiny``): the
    demo works from any folder and from an installed wheel."""
    config = Path(config or DEFAULT_CONFIG)
    if config.is_file():
        return config
    shipped = resources.files("configs") / f"{config.name.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return Path(str(shipped))
    names = sorted(p.name[:-5] for p in resources.files("configs").iterdir() if p.name.endswith(".yaml"))
    raise XelmError(f"demo config {config} not found: pass --config FILE or one of the shipped configs "
                    f"({', '.join(names)})")


def run_demo(config: str | Path | None, run_dir: str | Path, overrides: list[str] = (),
             progress: bool = True, base_from: str | Path | None = None, say_stages: bool | None = None) -> dict:
    """Every stage into ``run_dir``; ``base_from``: a finished run whose tokenizer and base to
    start from (the same config but for ``experts``), as an ablation of the expert stages does.
    ``progress``: bars (a terminal); ``say_stages``: the stage lines and time table (default: as
    ``progress``; a log file wants the lines without the bars)."""
    cfg = load_config(config_path(config), overrides)
    parse_features(cfg.experts.features)  # a typo fails now, not after pre-training
    run = RunDir(run_dir)
    # every corpus language with text, not only those the base sampled; None: the run has its plan
    to_plan = None if run.plan_file.exists() else languages_to_plan(cfg)
    if to_plan is not None and cfg.experts.k > len(to_plan):  # likewise
        raise XelmError(f"experts.k={cfg.experts.k} is more than the {len(to_plan)} languages the plan would "
                        f"cluster: use experts.k <= {len(to_plan)}")
    if base_from is not None and not run.is_run():
        run.adopt_base(base_from, cfg)
    run_dir = run.root
    say = print if (progress if say_stages is None else say_stages) else (lambda *a, **k: None)
    t0, clock = time.perf_counter(), StageClock()

    with clock.stage("corpus"):
        stats = corpus_stats(load_corpus(cfg.data.corpus))
    say(f"[1/{STAGES}] corpus {cfg.data.corpus}: {len(stats['languages'])} languages, "
        f"{stats['splits']['train']['characters']:,} training characters")

    say(f"[2/{STAGES}] tokenizer and base encoder (mmBERT curriculum)")
    with clock.stage("tokenizer and base"):
        base = pretrain(cfg, run_dir, progress=progress)
    say(f"      base: loss {base['loss']:.3f} after {base['tokens']:,} tokens on {base['languages']} languages"
        + (" (already complete)" if base.get("skipped") else ""))

    ec = cfg.experts
    with clock.stage("cluster plan"):
        if not run.plan_file.exists():
            result = build_plan(to_plan, cfg.data.corpus, ec.method, ec.k, ec.balanced, cfg.train.seed, run_dir,
                                features=ec.features, by_script=ec.by_script)
            write_plan(result, run.plan_file)
    plan = run.plan()
    say(f"[3/{STAGES}] {plan['method']} cluster plan, k={plan['k']}: "
        + ", ".join(f"{n} ({len(m)})" for n, m in plan["clusters"].items()))

    say(f"[4/{STAGES}] experts: each branched from the base, trained on its cluster only")
    with clock.stage("experts"):
        cards = train_all(run_dir, progress=progress)
    for c in cards:
        say(f"      {c['name']:<28} {c['tokens_trained']:>9,} tokens  validation loss {c['validation_loss']:.3f}")

    say(f"[5/{STAGES}] dense baseline at equal compute")
    with clock.stage("dense baseline"):
        dense = train_baseline(run_dir, progress=progress)
    say(f"      dense: {dense['tokens_trained']:,} tokens, validation loss {dense['validation_loss']:.3f}")

    say(f"[6/{STAGES}] new languages by HMR: {', '.join(cfg.data.exclude_languages) or 'none held out'}")
    with clock.stage("HMR and yardsticks"):
        added = [_add_held_out(run, lang, ec.hmr_tokens, [c["name"] for c in cards], say, progress)
                 for lang in cfg.data.exclude_languages]

    say(f"[7/{STAGES}] evaluation: per-language test loss, routing, zero-shot transfer")
    with clock.stage("evaluation"):
        metrics = evaluate(run_dir, progress=progress)
    s = metrics["summary"]
    say("      " + headline_sentence(metrics).replace("**", "") + " Routing top-1: "
        + ", ".join(f"{r} {v['top1_accuracy']:.0%}" for r, v in metrics["routing"].items()))

    summary = {"run_dir": str(run_dir), "corpus": {"languages": len(stats["languages"])},
               "base": base, "clusters": {n: len(m) for n, m in plan["clusters"].items()},
               "experts": [{k: c[k] for k in ("name", "tokens_trained", "validation_loss")} for c in cards],
               "dense": {k: dense[k] for k in ("tokens_trained", "validation_loss")},
               "hmr": [{k: c[k] for k in ("name", "parent", "validation_loss")} for c in added],
               "evaluation": {k: s[k] for k in ("equal_compute", "significant_wins", "significant_losses",
                                                "improved_fraction", "mean_delta_loss", "mean_delta_ci")}
               | {"report": str(run.report_dir / "report.md")},
               "seconds": round(time.perf_counter() - t0, 1), "seconds_by_stage": clock.seconds,
               "evaluation_seconds_by_part": metrics["seconds_by_part"]}
    write_json(run.demo_summary_file, summary)
    say(clock.table())
    say("      the evaluation, by part:\n" + StageClock.of(metrics["seconds_by_part"]).table(indent="        "))
    say(f"done in {summary['seconds']:.0f} s. Report: {run.report_dir / 'report.md'} "
        f"(plots beside it); run directory {run_dir}")
    return summary


def _add_held_out(run: RunDir, lang: str, tokens: int, cluster_experts: list[str], say, progress: bool) -> dict:
    """The HMR expert for a held-out language and its two yardsticks at equal tokens."""
    # Branched from the nearest *cluster* expert: not from an earlier HMR expert, whose extra
    # training would blur the comparison at equal tokens.
    name, registry = f"hmr-{lang}", run_registry(run)
    card = registry.card(name) if name in registry.names() else add_language(
        run.root, [lang], tokens, "auto", name, progress=progress, among=cluster_experts)
    controls = {p: train_control(run.root, lang, p, tokens, progress) for p in ("base", "dense")}
    say(f"      {lang}: parent {card['parent']}"
        + (f" (typology distance {card['parent_distance']:.3f})" if card.get("parent_distance") is not None else "")
        + f"; validation loss HMR {card['validation_loss']:.3f}, from base "
          f"{controls['base']['validation_loss']:.3f}, dense continued {controls['dense']['validation_loss']:.3f}")
    return card


def cmd_demo(args) -> int:
    summary = run_demo(args.config, args.run_dir, args.overrides, progress=interactive(args),
                       base_from=args.base_from, say_stages=not args.json)
    if args.json:
        print_json(summary)
    return 0
