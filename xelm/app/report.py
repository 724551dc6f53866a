"""The evaluation report: Markdown tables and PNG plots from ``metrics.json``."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from clustering import uriel  # noqa: E402
from clustering.typology import typology_distances  # noqa: E402
from experts.typology import uriel_proxies  # noqa: E402
from xelm.app.intervals import significant  # noqa: E402
from xelm.files import write_text  # noqa: E402
from xelm.rundir import RunDir  # noqa: E402


def _fmt(x, pct: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:.1%}" if pct else f"{x:.3f}"


def _delta(x) -> str:
    """A difference, always signed (negative: X-ELM better)."""
    return "–" if x is None else f"{x:+.3f}"


def distance_from_cluster(metrics: dict) -> dict[str, float]:
    """Each language's mean typological distance to the other languages of its cluster."""
    clusters = defaultdict(list)
    for lang, row in metrics["languages"].items():
        if row.get("cluster"):
            clusters[row["cluster"]].append(lang)
    out = {}
    for members in clusters.values():
        if len(members) < 2:
            continue
        proxy = uriel_proxies(members, None)
        d = typology_distances([proxy[m] for m in members])
        for i, lang in enumerate(members):
            out[lang] = float(np.delete(d[i], i).mean())
    return out


SIGN = "Δ = X-ELM − dense loss (nats; negative: X-ELM better)"


def headline_sentence(metrics: dict) -> str:
    """The one sentence the report leads with: wins and losses that the intervals support, the
    mean difference with its interval, and whether compute was equal (said here, once)."""
    s, c = metrics["summary"], metrics["compute"]
    if not s["languages"]:
        return "No language has both an expert and test text: nothing to compare."
    lo, hi = s["mean_delta_ci"]
    equal = ("at equal compute (every language's training tokens match)" if s["equal_compute"] else
             f"**NOT at equal compute** ({c['why']}): no equal-compute claim can be made")
    return (f"X-ELM ({metrics['headline']['ensemble']}) against the dense model {equal}: significantly better on "
            f"{s['significant_wins']} and significantly worse on {s['significant_losses']} of {s['languages']} "
            f"languages (95% paired intervals); better point estimate on {s['improved_fraction']:.1%}; mean Δ "
            f"{s['mean_delta_loss']:+.3f} nats [{lo:+.3f}, {hi:+.3f}] (negative: X-ELM better).")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_losses(metrics: dict, path: Path) -> Path:
    """Left: X-ELM against dense per language (below the diagonal: X-ELM better). Right: the
    per-language difference with its 95% interval, sorted."""
    head = metrics["headline"]["ensemble"]
    rows = [(r["dense"], r[head], r["delta"], *(np.nan if b is None else b for b in r["delta_ci"]))
            for r in metrics["languages"].values() if r.get("delta") is not None and r.get("cluster")]
    dense, xelm, delta, lo, hi = np.array(rows).T if rows else (np.zeros(0),) * 5
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax.scatter(dense, xelm, s=6, alpha=0.6)
    if len(rows):
        a, b = min(dense.min(), xelm.min()), max(dense.max(), xelm.max())
        ax.plot([a, b], [a, b], color="grey", lw=0.8)
    ax.set_xlabel("dense model (equal compute)")
    ax.set_ylabel(f"X-ELM ({head})")
    ax.set_title("Test loss per language (below the line: X-ELM better)")
    order = np.argsort(delta)
    x = np.arange(len(delta))
    sig = np.where(hi[order] < 0, "C2", np.where(lo[order] > 0, "C3", "grey"))
    bx.vlines(x, lo[order], hi[order], colors=sig, lw=1.0, alpha=0.6)
    bx.scatter(x, delta[order], s=6, c=sig)
    bx.axhline(0, color="black", lw=0.8)
    s = metrics["summary"]
    bx.set_xlabel(f"languages, sorted by Δ (green: interval below 0, {s['significant_wins']}; "
                  f"red: above 0, {s['significant_losses']})" if len(delta) else "languages")
    bx.set_ylabel(SIGN)
    bx.set_title("Per-language difference, 95% paired interval")
    return _save(fig, path)


def plot_improvement_vs_distance(metrics: dict, distance: dict[str, float], path: Path) -> Path:
    head = metrics["headline"]["ensemble"]
    xs, ys = [], []
    for lang, d in distance.items():
        r = metrics["languages"][lang]
        if r.get("dense") is not None and r.get(head) is not None:
            xs.append(d)
            ys.append(r[head] - r["dense"])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(xs, ys, s=8, alpha=0.6)
    ax.axhline(0, color="grey", lw=0.8)
    if len(xs) > 2:
        slope, icept = np.polyfit(xs, ys, 1)
        grid = np.linspace(min(xs), max(xs), 10)
        ax.plot(grid, slope * grid + icept, color="C1", label=f"slope {slope:.2f}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.set_xlabel("typological distance from the rest of its cluster")
    ax.set_ylabel(SIGN)
    ax.set_title("Improvement against typological distance")
    return _save(fig, path)


def plot_confusion(routing: dict, path: Path) -> Path:
    names, conf = routing["experts"], np.array(routing["confusion"], float)
    conf = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(max(6, 2.5 + 0.6 * len(names)), max(5, 2.5 + 0.5 * len(names))))
    im = ax.imshow(conf, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("expert chosen (TF-IDF, top-1)")
    ax.set_ylabel("expert of the text's language")
    fig.colorbar(im, ax=ax, fraction=0.04)
    ax.set_title("Routing confusion (rows sum to 1)", fontsize=10)
    return _save(fig, path)


def plot_transfer_by_family(transfer: dict, path: Path) -> Path:
    fam = {}
    for lang in transfer["dense"]["classification"]:
        chain = uriel.family_path(lang) if uriel.has_uriel(lang) else []
        fam[lang] = chain[0] if chain else "other"
    counts = defaultdict(int)
    for f in fam.values():
        counts[f] += 1
    top = [f for f, _ in sorted(counts.items(), key=lambda kv: -kv[1])[:10]]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.4
    for j, model in enumerate(("dense", "xelm")):
        acc = transfer[model]["classification"]
        vals = [np.mean([acc[lang] for lang in acc if fam[lang] == f]) for f in top]
        ax.bar(np.arange(len(top)) + (j - 0.5) * width, vals, width, label=model)
    ax.set_xticks(range(len(top)), [f"{f} ({counts[f]})" for f in top], rotation=40, ha="right", fontsize=8)
    if "chance" in transfer:
        ax.axhline(transfer["chance"]["classification"], ls="--", color="grey", lw=1,
                   label="guessing (most common article)")
    ax.set_ylabel("zero-shot article classification accuracy")
    ax.set_title("Cross-lingual transfer from English, by language family")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)  # beside the bars, never over them
    return _save(fig, path)


def findings(metrics: dict, distance: dict[str, float]) -> list[str]:
    """What the numbers say, and where they point when the experts lose: routing, the budget per
    language, typological fit, base quality. Every sentence is computed, none is canned."""
    s, head = metrics["summary"], metrics["headline"]["ensemble"]
    langs, means = metrics["languages"], s["mean_loss"]
    out = []
    if s["languages"]:
        lo, hi = s["mean_delta_ci"]
        verdict = ("X-ELM is better on average" if hi < 0 else "X-ELM is worse on average" if lo > 0 else
                   "the mean difference is not distinguishable from zero")
        out.append(f"{verdict} (mean Δ {s['mean_delta_loss']:+.3f} [{lo:+.3f}, {hi:+.3f}]); per language, "
                   f"{s['significant_wins']} significant wins and {s['significant_losses']} significant losses of "
                   f"{s['languages']}, the rest within noise ({s['scored_tokens_median']:,.0f} scored test tokens "
                   "in the median language).")
        second = s.get("second_line")
        if second and second["languages"]:
            lo, hi = second["mean_delta_ci"]
            name = metrics["headline"]["second_line"]
            out.append(f"Second line, {name} ({metrics['headline']['descriptions'][name]}): mean Δ "
                       f"{second['mean_delta_loss']:+.3f} [{lo:+.3f}, {hi:+.3f}], {second['significant_wins']} "
                       f"significant wins, {second['significant_losses']} significant losses; better point "
                       f"estimate on {second['improved_fraction']:.1%}.")
    if means.get("own_expert") is not None and means.get(head) is not None:
        gap = means[head] - means["own_expert"]
        out.append(f"Routing: {head} is {abs(gap):.3f} nats {'worse' if gap > 0 else 'better'} than always using "
                   f"each language's own expert (an oracle router); "
                   + ("routing is not what holds X-ELM back." if gap < 0.02 else "better routing would help."))
    if s["equal_compute"]:
        out.append("Budget: the dense model replayed the experts' batches, so every language got exactly the "
                   "same training tokens on both sides; a difference comes from the languages no longer sharing "
                   "one model's capacity, not from how much of each language either side saw.")
    worst = min(s["by_cluster"].items(), key=lambda kv: kv[1]["improved_fraction"] or 0, default=None)
    if worst:
        out.append(f"Weakest cluster: {worst[0]} (X-ELM better on {worst[1]['improved_fraction']:.0%} of its "
                   f"{worst[1]['languages']} languages, mean Δ {_delta(worst[1]['mean_delta_loss'])}).")
    pairs = [(d, langs[lang][head] - langs[lang]["dense"]) for lang, d in distance.items()
             if langs[lang].get("dense") is not None and langs[lang].get(head) is not None]
    if len(pairs) > 2:
        r = float(np.corrcoef(np.array(pairs).T)[0, 1])
        out.append(f"Typological fit: correlation between a language's distance from the rest of its cluster and "
                   f"Δ is r = {r:+.2f} "
                   + ("(languages far from their cluster gain less: more or tighter clusters would help them)."
                      if r > 0.1 else "(no strong link: the clusters' typological spread is not the limit)."))
    base = means.get("base")
    if base is not None:
        out.append(f"Base quality: the base's mean test loss is {base:.2f} nats (perplexity {np.exp(base):,.0f}); "
                   "every model here is early in training, so these are early-training differences — a bigger "
                   "model or budget (`configs/udhr-demo.yaml`: `train.steps`, `experts.tokens`) tests whether "
                   "they hold.")
    new = metrics["new_languages"]
    if new:
        wins = [lang for lang, r in new.items() if r.get("hmr") is not None and
                all(r.get(k) is None or r["hmr"] < r[k] for k in ("base_continued", "dense_continued"))]
        sig = [lang for lang, r in new.items() if all(
            significant(*(r.get(k) or {}).get("ci", [None, None])) == -1
            for k in ("hmr_vs_base_continued", "hmr_vs_dense_continued"))]
        forgot = [r["forgetting"]["delta"] for r in new.values() if r.get("forgetting")]
        out.append(f"New languages: the HMR expert beats both yardsticks on {len(wins)} of {len(new)} "
                   f"({', '.join(wins) or 'none'}), significantly on {len(sig)} ({', '.join(sig) or 'none'})"
                   + (f"; continuing the dense model on a new language costs the seen languages "
                      f"{np.mean(forgot):+.3f} nats on average, which an HMR expert does not." if forgot else "."))
    t = metrics["transfer"]
    if "chance" in t:
        for task, label in (("classification", "article classification"), ("retrieval", "retrieval")):
            best = max(t[f"mean_{task}"].values())
            out.append(f"Transfer, {label}: dense {t[f'mean_{task}']['dense']:.1%}, X-ELM "
                       f"{t[f'mean_{task}']['xelm']:.1%} against {t['chance'][task]:.1%} by guessing"
                       + (" — too close to guessing to tell the two apart; the models are too small "
                          "or too briefly trained for zero-shot transfer." if best < t["chance"][task] + 0.05 else "."))
    return out


def _interval(d: dict | None) -> str:
    if not d:
        return _fmt(None)
    if None in d["ci"]:  # one paragraph: no interval
        return f"{_delta(d['delta'])} [{_fmt(None)}]"
    return f"{_delta(d['delta'])} [{_delta(d['ci'][0])}, {_delta(d['ci'][1])}]"


def _by_reason(reasons: dict[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for lang, reason in reasons.items():
        out[reason].append(lang)
    return out


SPLIT_ARTICLES = {"test": "UDHR articles 28–30", "validation": "UDHR articles 25–27: the split that chooses"}


def write_report(run_dir: str | Path, metrics: dict) -> Path:
    split = metrics.get("split", "test")
    out = RunDir(run_dir).report_for(split)
    out.mkdir(parents=True, exist_ok=True)
    s, head = metrics["summary"], metrics["headline"]["ensemble"]
    distance = distance_from_cluster(metrics)
    plots = {"losses": plot_losses(metrics, out / "loss_by_language.png"),
             "distance": plot_improvement_vs_distance(metrics, distance, out / "improvement_vs_distance.png"),
             "confusion": plot_confusion(metrics["routing"]["tfidf"], out / "routing_confusion.png")}
    if "dense" in metrics["transfer"]:
        plots["transfer"] = plot_transfer_by_family(metrics["transfer"], out / "transfer_by_family.png")
    c, cov = metrics["compute"], metrics["coverage"]

    def group_rows(groups: dict, label: str = "group") -> list[str]:
        return [f"| {label} | languages | significant wins | significant losses | Δ < 0 | mean Δ [95%] |",
                "|---|---|---|---|---|---|",
                *[f"| {k} | {v['languages']} | {v['significant_wins']} | {v['significant_losses']} | "
                  f"{_fmt(v['improved_fraction'], True)} | {_delta(v['mean_delta_loss'])} "
                  f"[{_delta(v['mean_delta_ci'][0])}, {_delta(v['mean_delta_ci'][1])}] |"
                  for k, v in groups.items() if v["languages"]]]

    lines = [
        "# X-ELM report", "",
        f"Held-out masked-LM loss on the {split} split ({SPLIT_ARTICLES.get(split, 'held out')}), "
        f"{s['languages']} languages; "
        f"{metrics['headline']['scoring']}. Headline ensemble: **{head}** ({metrics['headline']['why']}). "
        f"Sign everywhere: {SIGN}.", "",
        "## Headline", "",
        f"- {headline_sentence(metrics)}",
        f"- Compute: dense {c['dense_tokens']:,} tokens vs experts {c['experts_total']:,} in total, both on top "
        f"of the base's {c['base_tokens']:,}; {c['why']}.",
        f"- Second line, {metrics['headline']['second_line']} "
        f"({metrics['headline']['descriptions'][metrics['headline']['second_line']]}): mean Δ "
        f"{_delta(s['second_line']['mean_delta_loss'])}, {s['second_line']['significant_wins']} significant wins, "
        f"{s['second_line']['significant_losses']} significant losses.", "",
        "## What the numbers say", "", *[f"- {line}" for line in findings(metrics, distance)], "",
        "## Mean loss by model", "", "| model | mean loss |", "|---|---|",
        *[f"| {name} | {_fmt(v)} |" for name, v in sorted(s["mean_loss"].items(), key=lambda kv: kv[1] or 9e9)],
        "", "## Every ensemble against the dense model", "",
        "Best first, by the rule the validation split's table chooses `experts.ensemble` with: the most "
        "languages improved, then the fewest significant losses, then the lowest mean Δ.", "",
        *group_rows({name: s["by_ensemble"][name] for name in s["ensemble_ranking"]}, "ensemble"),
        "", "## By resource level (the curriculum stage a language joined)", "",
        *group_rows(s["by_resource_level"]),
        "", "## By cluster", "", *group_rows(s["by_cluster"]),
        "", f"![per-language loss]({plots['losses'].name})", "",
        f"![improvement vs distance]({plots['distance'].name})", "",
        "## New languages (HMR) at equal tokens", "",
        "Every token of the language's test text; Δ = HMR − yardstick with a 95% paired interval over its "
        "paragraphs. Forgetting: the dense model continued on the language, minus the dense model, on one "
        "passage of every seen language (an HMR expert changes no other expert, so it forgets nothing).", "",
        "| language | parent | HMR expert | base branched | dense continued | Δ vs base branched | "
        "Δ vs dense continued | dense forgetting |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {lang} | {r['parent']} | {_fmt(r.get('hmr'))} | {_fmt(r.get('base_continued'))} | "
          f"{_fmt(r.get('dense_continued'))} | {_interval(r.get('hmr_vs_base_continued'))} | "
          f"{_interval(r.get('hmr_vs_dense_continued'))} | {_interval(r.get('forgetting'))} |"
          for lang, r in metrics["new_languages"].items()],
        "", "## Routing", "", "| router | top-1 on the text's own expert |", "|---|---|",
        *[f"| {k} | {_fmt(v['top1_accuracy'], True)} |" for k, v in metrics["routing"].items()],
        "", f"![routing confusion]({plots['confusion'].name})", "",
        "## Coverage", "",
        f"{cov['planned']} languages in the plan, {cov['scored']} of them scored.",
        *([f"- no test text: {', '.join(cov['no_test_text'])}"] if cov["no_test_text"] else []),
        *[f"- {reason}: {', '.join(langs)}" for reason, langs in _by_reason(cov["not_in_plan"]).items()], "",
    ]
    t = metrics["transfer"]
    if "dense" in t:
        chance = t.get("chance", {})
        lines += ["## Zero-shot cross-lingual transfer (held-out articles 25–30)", "",
                  "| task | dense | X-ELM | guessing |", "|---|---|---|---|",
                  *[f"| {label} | {_fmt(t[f'mean_{task}']['dense'], True)} | {_fmt(t[f'mean_{task}']['xelm'], True)} "
                    f"| {_fmt(chance.get(task), True)} |"
                    for task, label in (("classification", "article classification (probe trained on English)"),
                                        ("retrieval", "retrieval of the English article"))], "",
                  f"![transfer by family]({plots['transfer'].name})", ""]
    lines += ["Per-language numbers: `metrics.json` (`languages.{iso}`)."]
    return write_text(out / "report.md", "\n".join(lines) + "\n")
