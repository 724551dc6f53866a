"""``xelm evaluate``: the X-ELM comparison at equal compute, per language, on held-out text.

Losses are masked-LM nats per masked token on the test split, with the same deterministic masks
for every model (``routing.scoring``). The headline X-ELM ensemble is fixed in advance — TF-IDF
routing, top-1 — so the test split is never used to choose between configurations.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from experts.registry import run_registry
from routing import XELM
from routing.scoring import mixture_loss, score_model
from xelm.app.console import print_json
from xelm.app.report import write_report
from xelm.app.transfer import article_classification, chance_levels, paragraphs, retrieval
from xelm.data import load_corpus
from xelm.embed import embed_texts
from xelm.errors import XelmError
from xelm.files import write_json
from xelm.rundir import RunDir
from xelm.weights import load_weights

HEADLINE = ("tfidf", 1)
MAX_LEN = 128  # texts are paragraphs; longer ones are cut here (short rows keep scoring cheap)


def _per_language(langs: list[str], loss: np.ndarray, count: np.ndarray) -> dict[str, float]:
    """Token-weighted mean loss per language."""
    tot, n = defaultdict(float), defaultdict(float)
    for lang, x, c in zip(langs, loss, count):
        if c > 0 and np.isfinite(x):
            tot[lang] += x * c
            n[lang] += c
    return {lang: tot[lang] / n[lang] for lang in tot}


def _stage_of(cfg, lang: str) -> str:
    """Resource level: the curriculum stage in which the language joined pre-training."""
    for stage in cfg.curriculum:
        if stage.languages == "all" or lang in stage.languages:
            return stage.name
    return cfg.curriculum[-1].name


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None and np.isfinite(x)]
    return float(np.mean(xs)) if xs else None


def evaluate(run_dir: str | Path, routers=("language", "tfidf", "posterior"), top_ks=(1, 2),
             progress: bool = True) -> dict:
    """Score every model on the test split; write ``DIR/report/metrics.json`` and the report."""
    run = RunDir(run_dir)
    run_dir = run.root
    cfg, plan, tok = run.config(), run.plan(), run.tokenizer()
    cards = run_registry(run).cards()
    own = {lang: c["name"] for c in cards if c.get("kind") == "cluster" for lang in c["languages"]}
    hmr = {c["languages"][0]: c for c in cards if c.get("kind") == "hmr" and len(c["languages"]) == 1}
    if not own:
        raise XelmError(f"no cluster experts in {run.registry_dir}: run `xelm expert train --all` first")
    test = load_corpus(cfg.data.corpus, languages=None)["test"]
    keep = [i for i, lang in enumerate(test["lang"]) if lang in own or lang in hmr]
    test = test.select(keep)
    texts, langs = paragraphs(test["lang"], test["text"])  # short, each a natural unit of the article
    if not texts:
        raise XelmError("the test split has no text in the experts' languages")
    say = tqdm.write if progress else (lambda *a: None)

    # The equal-compute comparison routes among the cluster experts only: HMR experts had extra
    # training (and are judged on their own languages below).
    cluster = [c["name"] for c in cards if c.get("kind") == "cluster"]
    xelm = XELM.from_run(run_dir, max_len=MAX_LEN, experts=cluster)
    say(f"scoring {len(texts):,} test paragraphs: base, dense and {len(cluster)} experts, same masks")
    # One pass per model gives every model's log-probability of every masked token; every
    # router's mixture then follows in numpy, without running a model again.
    xelm.pool.add("(base)", run.base())
    xelm.pool.add("(dense)", run.dense())
    lp_ExNxK, w_NxK = xelm.label_logprobs(texts, experts=["(base)", "(dense)", *cluster])
    count = w_NxK.sum(1)
    scores = {name: mixture_loss(lp_ExNxK[[i]], w_NxK, np.ones((len(texts), 1)))
              for name, i in (("base", 0), ("dense", 1))}
    lp_ExNxK = lp_ExNxK[2:]
    routings = {}
    for r in tqdm(routers, desc="routing", disable=not progress):
        for k in top_ks:
            routings[r, k] = xelm.route(texts, router=r, top_k=k, lang=langs if r == "language" else None)
            scores[f"xelm:{r}@{k}"] = mixture_loss(lp_ExNxK, w_NxK, routings[r, k].weights)
    # Each language's own expert alone (HMR languages: their HMR expert).
    own_w = np.array([[float(own.get(lang) == name) for name in cluster] for lang in langs])
    no_own = ~own_w.any(1)
    own_w[no_own] = 1.0
    own_loss = np.where(no_own, np.nan, mixture_loss(lp_ExNxK, w_NxK, own_w))
    for lang, card in hmr.items():
        rows = [i for i, lg in enumerate(langs) if lg == lang]
        if rows:
            own_loss[rows] = score_model(xelm.pool.get(card["name"]), tok, [texts[i] for i in rows],
                                         max_len=MAX_LEN)
    scores["own_expert"] = own_loss

    per_lang = {name: _per_language(langs, s, count) for name, s in scores.items()}
    headline = f"xelm:{HEADLINE[0]}@{HEADLINE[1]}"
    seen = sorted(lang for lang in per_lang["dense"] if lang in own)
    deltas = {lang: per_lang[headline][lang] - per_lang["dense"][lang] for lang in seen}
    cluster_of = {lang: name for name, members in plan["clusters"].items() for lang in members}
    by_level, by_cluster = defaultdict(list), defaultdict(list)
    for lang, d in deltas.items():
        by_level[_stage_of(cfg, lang)].append(d)
        by_cluster[cluster_of.get(lang, own[lang])].append(d)

    # New languages: HMR vs base-branched vs dense-continued at equal tokens (+ untouched models).
    new_langs = {}
    for lang, card in sorted(hmr.items()):
        rows = [i for i, lg in enumerate(langs) if lg == lang]
        if not rows:
            continue
        sub = [texts[i] for i in rows]
        entry = {"hmr": per_lang["own_expert"].get(lang), "parent": card["parent"],
                 "tokens": card["tokens_trained"], "base": per_lang["base"].get(lang),
                 "dense": per_lang["dense"].get(lang)}
        for parent in ("base", "dense"):
            path = run.control(parent, lang) / "model"
            if (path / "model.json").exists():
                loss = score_model(load_weights(path), tok, sub, max_len=MAX_LEN)
                entry[f"{parent}_continued"] = _per_language([lang] * len(sub), loss, count[rows]).get(lang)
        new_langs[lang] = entry

    routing = _routing_accuracy(xelm, texts, langs, own, {r: routings[r, 1] for r in routers if (r, 1) in routings})
    transfer = _transfer(run, cfg, xelm, tok, set(own))
    compute = _compute(run, cards)
    metrics = {
        "headline": {"ensemble": headline, "why": "fixed in advance (c-BTM / X-ELM inference routing); "
                     "the test split chooses nothing"},
        "summary": {
            "languages": len(seen),
            "improved_fraction": float(np.mean([d < 0 for d in deltas.values()])) if deltas else None,
            "mean_delta_loss": _mean(deltas.values()),
            "by_resource_level": {k: {"languages": len(v), "mean_delta_loss": _mean(v),
                                      "improved_fraction": float(np.mean([d < 0 for d in v]))}
                                  for k, v in by_level.items()},
            "by_cluster": {k: {"languages": len(v), "mean_delta_loss": _mean(v),
                               "improved_fraction": float(np.mean([d < 0 for d in v]))}
                           for k, v in sorted(by_cluster.items())},
            "mean_loss": {name: _mean(v.get(lang) for lang in seen) for name, v in per_lang.items()},
        },
        "languages": {lang: {**{name: v.get(lang) for name, v in per_lang.items()},
                             "expert": own.get(lang) or hmr[lang]["name"], "cluster": cluster_of.get(lang),
                             "resource_level": _stage_of(cfg, lang), "texts": langs.count(lang)}
                      for lang in sorted(set(langs))},
        "new_languages": new_langs,
        "routing": routing,
        "transfer": transfer,
        "compute": compute,
    }
    write_json(run.report_dir / "metrics.json", metrics)
    write_report(run_dir, metrics)
    return metrics


def _routing_accuracy(xelm, texts, langs, own, top1: dict) -> dict:
    """Share of test texts whose top-1 expert is the one trained on their language, and the
    confusion counts (rows: the right expert, columns: the chosen one). ``top1``: routings
    already computed for all texts, by router."""
    rows = [i for i, lang in enumerate(langs) if lang in own]
    truth = [own[langs[i]] for i in rows]
    out = {}
    for router in ("tfidf", "posterior", "langid"):
        r = top1[router] if router in top1 else xelm.route(texts, router=router, top_k=1)
        chosen = [r.names[int(np.argmax(r.weights[i]))] for i in rows]
        names = sorted(set(truth) | set(chosen))
        conf = np.zeros((len(names), len(names)), int)
        for t, c in zip(truth, chosen):
            conf[names.index(t), names.index(c)] += 1
        out[router] = {"top1_accuracy": float(np.mean([t == c for t, c in zip(truth, chosen)])),
                       "experts": names, "confusion": conf.tolist()}
    return out


def _transfer(run: RunDir, cfg, xelm, tok, languages: set[str]) -> dict:
    """Zero-shot article classification and retrieval on held-out articles: dense vs X-ELM."""
    corpus = load_corpus(cfg.data.corpus)
    rows: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for split in ("validation", "test"):
        part = corpus[split]
        for lang, unit, text in zip(part["lang"], part["unit"], part["text"]):
            if lang in languages or lang == "eng":
                rows[lang][0].append(unit)
                rows[lang][1].append(text)
    rows = dict(rows)
    if "eng" not in rows:
        return {"skipped": "no English text to train the probe on"}
    # Every text both tasks need, embedded in one batched call per model (not one per language).
    needed = sorted({t for units, texts in rows.values() for t in (*texts, *paragraphs(units, texts)[0])})
    dense = run.dense()
    vectors = {"dense": embed_texts(dense, tok, needed, max_len=MAX_LEN),
               "xelm": xelm.embed(needed, router=HEADLINE[0], top_k=HEADLINE[1])}
    at = {t: i for i, t in enumerate(needed)}
    out = {}
    for name, vecs in vectors.items():
        def fn(texts, lang, vecs=vecs):
            return vecs[[at[t] for t in texts]]
        out[name] = {"classification": article_classification(fn, rows), "retrieval": retrieval(fn, rows)}
    for task in ("classification", "retrieval"):
        out[f"mean_{task}"] = {name: _mean(out[name][task].values()) for name in vectors}
    out["chance"] = chance_levels(rows)
    return out


def _compute(run: RunDir, cards: list[dict]) -> dict:
    base, dense = run.base_summary(), run.dense_summary()
    experts = {c["name"]: c["tokens_trained"] for c in cards if c.get("kind") == "cluster"}
    return {"base_tokens": base["tokens"], "dense_tokens": dense["tokens_trained"],
            "expert_tokens": experts, "experts_total": sum(experts.values()),
            "dense_languages": len(dense.get("languages") or []) or None,
            "equal": sum(experts.values()) == dense["tokens_trained"]}


def cmd_evaluate(args) -> int:
    m = evaluate(args.run_dir, progress=not args.json)
    if args.json:
        print_json(m)
        return 0
    s = m["summary"]
    print(f"X-ELM ({m['headline']['ensemble']}) beats the equal-compute dense model on "
          f"{s['improved_fraction']:.1%} of {s['languages']} languages; mean Δ loss {s['mean_delta_loss']:+.3f}")
    for name, loss in sorted(s["mean_loss"].items(), key=lambda kv: kv[1] or 9e9):
        print(f"  {name:<22}{loss:.3f}")
    print(f"report: {RunDir(args.run_dir).report_dir / 'report.md'}")
    return 0


