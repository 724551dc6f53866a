"""``xelm cluster``: write a cluster plan (which languages share an expert) and its plots."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from clustering.build import build_plan, cached_corpus, needs_texts
from clustering.planning import write_plan
from experts.registry import run_registry
from xelm.app.console import interactive, print_json
from xelm.app.langargs import resolve_languages
from xelm.errors import XelmError
from xelm.rundir import RunDir


def cmd_cluster(args) -> int:
    languages, corpus, held_out = _languages_and_corpus(args)
    out = args.out or (RunDir(args.run_dir).plan_file if args.run_dir else None)
    if out and (owner := _run_whose_plan_is(out)):
        _check_plan_is_free(owner)
    ec = RunDir(args.run_dir).config().experts if args.run_dir and RunDir(args.run_dir).is_run() else None
    balanced = args.balanced if args.balanced is not None else bool(ec and ec.balanced)
    by_script = args.by_script if args.by_script is not None else bool(ec and ec.by_script)
    features = args.features or (ec.features if ec else None)
    # A plan of every corpus language takes tens of seconds (TF-IDF, plots): say which step runs.
    steps = tqdm(total=2 if out else 1, desc=f"{args.method} plan of {len(languages)} languages: ", unit="step",
                 disable=not interactive(args), leave=False, bar_format="{desc}step {n}/{total} [{elapsed}]")
    with steps:
        result = build_plan(languages, corpus, args.method, args.k, balanced, args.seed, args.run_dir,
                            needs_texts(args.method, balanced, languages if args.languages and not by_script else None),
                            features=features, by_script=by_script, progress=interactive(args))
        if held_out:
            result.plan["held_out"] = sorted(held_out)
        steps.update(1)
        steps.set_description("plots and plan file")
        written = write_plan(result, out) if out else {}
        steps.update(1 if out else 0)
    if args.json:
        print_json(result.plan)
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


def _run_whose_plan_is(out) -> RunDir | None:
    """The run whose plan file ``out`` is, however it is spelt (relative, absolute, through ``..``
    or a symlink), or None when it is no run's plan."""
    target = Path(out).resolve()
    run = RunDir(target.parent)
    return run if run.is_run() and run.plan_file.resolve() == target else None


def _check_plan_is_free(run: RunDir) -> None:
    """A run's plan is fixed once experts were trained on it: a new plan under them would
    leave a registry and a dense baseline that belong to another plan."""
    trained = [c["name"] for c in run_registry(run).cards() if c.get("kind") == "cluster"]
    if trained:
        raise XelmError(f"{run.root} already has cluster experts trained on its plan ({', '.join(trained)}): "
                        "its plan is fixed; write an alternative plan with --out FILE, or start a new --run-dir")


def _languages_and_corpus(args) -> tuple[list[str], str, list[str]]:
    """Languages to cluster, the corpus their texts come from, and those the run holds out."""
    if args.languages is not None or args.family is not None:
        corpus = args.corpus or "udhr"
        available = set(cached_corpus(corpus)["train"]["lang"]) if args.family else None
        return resolve_languages(args.languages, args.family, available, corpus), corpus, []
    if args.corpus is None and args.run_dir is None:
        raise XelmError("say which languages to cluster: --languages iso,iso,..., --corpus SPEC or --run-dir DIR")
    held_out: list[str] = []
    chosen = None
    corpus = args.corpus
    if corpus is None:
        cfg = RunDir(args.run_dir).config()
        corpus, chosen, held_out = cfg.data.corpus, cfg.data.languages, list(cfg.data.exclude_languages)
    languages = list(chosen) if chosen else sorted(set(cached_corpus(corpus)["train"]["lang"]))
    return [lang for lang in languages if lang not in held_out], corpus, held_out
