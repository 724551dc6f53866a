"""The X-ELM ablation: which cluster plan, k and expert budget make experts beat the dense model
at equal compute. Every row starts from one finished base (``--base``: tokenizer and encoder
pre-trained once), so rows differ only in ``experts.*``; each row trains its plan's experts and
the equal-compute dense baseline that replays their batches, then is evaluated on the
validation split (which *chooses*) and on the test split (which only reports), through
``xelm.app.evaluate.evaluate_headline``: the full evaluation's headline (TF-IDF top-1 X-ELM
against the dense model, every token, paired intervals), running each text through the dense
model and its routed expert only.

    python benchmarks/ablation.py --base runs/demo --out runs/ablation
    python benchmarks/ablation.py --base runs/demo --out runs/ablation --rows typology-k4 script-k8

Prints one line per row and the row validation picks; writes OUT/ablation.json and
OUT/ablation.md (for the rows given). Rows already complete under OUT are read back, not
recomputed (their seconds then count only what was left to do); a stored evaluation is reused
only when it was made under the present scoring protocol from the row's present experts and
dense baseline (``xelm.app.evaluate.stored_headline``). HMR is not part of the
comparison (the demo adds it), so rows skip it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clustering.build import build_plan  # noqa: E402
from clustering.planning import write_plan  # noqa: E402
from experts.plan_integrity import plan_languages  # noqa: E402
from experts.training import train_all, train_baseline  # noqa: E402
from xelm.app.evaluate import choice_key, evaluate_headline, stored_headline  # noqa: E402
from xelm.config import from_dict, to_dict  # noqa: E402
from xelm.files import write_json, write_text  # noqa: E402
from xelm.rundir import RunDir  # noqa: E402


def row(method: str, k: int, steps: int, *, balanced: bool = True, by_script: bool = False, **extra) -> dict:
    """One row's ``experts.*`` overrides. Every row names its method, k, size balance and script
    split, so a base whose config has other defaults (the demo's plan is unbalanced) still runs
    the row its name says; ``lr`` and ``temperature`` come from the base unless given."""
    return {"method": method, "k": k, "by_script": by_script, "balanced": balanced, "tokens": steps * 32 * 128,
            **extra}


# name -> experts.* overrides; a step is 32 rows of 128 tokens.
ROWS = {
    "typology-k4-32": row("typology", 4, 32),
    "typology-k4-64": row("typology", 4, 64),
    "script-k8-32": row("typology", 8, 32, by_script=True),
    "script-k8-32-lr3e-3": row("typology", 8, 32, by_script=True, lr=0.003),
    "script-k8-16": row("typology", 8, 16, by_script=True),
    "tfidf-k8-32": row("tfidf", 8, 32),
    "tfidf-k8-128": row("tfidf", 8, 128),  # the study's experts
    "tfidf-k16-16": row("tfidf", 16, 16),  # the demo's total compute
    "tfidf-k16-32": row("tfidf", 16, 32),
    # k-means without the size balance: a small language stays with the relatives it shares subwords
    # with, however large that cluster grows (balanced clusters split the Cyrillic and Latin groups).
    "tfidf-k16-16-unbalanced": row("tfidf", 16, 16, balanced=False),
    "tfidf-k32-8-unbalanced": row("tfidf", 32, 8, balanced=False),
    "tfidf-k16-16-unbalanced-lr3e-3": row("tfidf", 16, 16, balanced=False, lr=0.003),
    # The experts' language sampling inside a cluster (experts.temperature, 0.5 by default): lower
    # is nearer uniform, so the small languages of a mixed cluster get a larger share of its tokens.
    "tfidf-k16-16-unbalanced-t0.3": row("tfidf", 16, 16, balanced=False, temperature=0.3),
    "tfidf-k16-16-unbalanced-t0.1": row("tfidf", 16, 16, balanced=False, temperature=0.1),
}
FIGURES = ("languages", "improved_fraction", "significant_wins", "significant_losses", "mean_delta_loss",
           "mean_delta_ci")


def run_row(base: RunDir, out: Path, name: str, experts: dict, splits: list[str]) -> dict:
    run = RunDir(out / name)
    cfg = base.config()
    cfg = from_dict(to_dict(cfg) | {"experts": to_dict(cfg)["experts"] | experts})
    if run.is_run():
        run.prepare(cfg)  # a row directory made under another definition of the row is an error, not a result
    else:
        run.adopt_base(base, cfg)
    ec, t0, seconds = cfg.experts, time.perf_counter(), {}
    if not run.plan_file.exists():
        result = build_plan(plan_languages(run), cfg.data.corpus, ec.method, ec.k, ec.balanced, cfg.train.seed,
                            run.root, features=ec.features, by_script=ec.by_script)
        write_plan(result, run.plan_file)
    seconds["plan"] = time.perf_counter() - t0
    train_all(run.root)
    seconds["experts"] = time.perf_counter() - t0 - sum(seconds.values())
    train_baseline(run.root)
    seconds["dense"] = time.perf_counter() - t0 - sum(seconds.values())
    figures = {}
    for split in splits:
        m = stored_headline(run.root, split) or evaluate_headline(run.root, split=split, progress=True)
        figures[split] = {k: m["summary"][k] for k in FIGURES} | {"mean_loss": m["summary"]["mean_loss"],
                                                                  "by_cluster": m["summary"]["by_cluster"]}
        seconds[f"evaluate {split}"] = time.perf_counter() - t0 - sum(seconds.values())
    plan = run.plan()
    return {"row": name, "experts": experts, "clusters": {n: len(m) for n, m in plan["clusters"].items()},
            "mixed_scripts": plan.get("mixed_scripts"), "seconds": {k: round(v, 1) for k, v in seconds.items()},
            **figures}


def chosen(rows: list[dict]) -> dict:
    """The row validation picks, by the rule it picks ensembles with (``choice_key``)."""
    return min(rows, key=lambda r: choice_key(r["validation"]))


def line(r: dict, split: str) -> str:
    f = r.get(split)
    if not f:
        return "n/a"
    lo, hi = f["mean_delta_ci"]
    return (f"{f['improved_fraction']:.1%} better, {f['significant_wins']} sig. wins / {f['significant_losses']} "
            f"sig. losses, mean Δ {f['mean_delta_loss']:+.3f} [{lo:+.3f}, {hi:+.3f}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="a run with a finished tokenizer and base")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rows", nargs="*", choices=sorted(ROWS), default=list(ROWS))
    ap.add_argument("--splits", nargs="*", default=["validation", "test"], choices=["validation", "test"])
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in a.rows:
        results.append(run_row(RunDir(a.base), a.out, name, ROWS[name], a.splits))
        r = results[-1]
        print(f"{name}: validation {line(r, 'validation')}; test {line(r, 'test')}; seconds {r['seconds']}",
              flush=True)
    report = {"rows": results}
    md = ["| row | clusters (mixing scripts) | validation | test |", "|---|---|---|---|"]
    for r in results:
        mixed = f" ({len(r['mixed_scripts'])})" if r.get("mixed_scripts") is not None else ""
        md.append(f"| {r['row']} | {len(r['clusters'])}{mixed} | {line(r, 'validation')} | {line(r, 'test')} |")
    if all("validation" in r for r in results):
        pick = chosen(results)
        report["chosen_by_validation"] = pick["row"]
        md.append(f"\nValidation picks **{pick['row']}** (most languages improved, then fewest significant "
                  "losses, then lowest mean Δ).")
        print(f"validation picks {pick['row']}")
    write_json(a.out / "ablation.json", report)
    write_text(a.out / "ablation.md", "\n".join(md) + "\n")
    print("\n".join(md))
    print(json.dumps({"written": str(a.out / "ablation.json")}))


if __name__ == "__main__":
    main()
