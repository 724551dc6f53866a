"""``xelm evaluate``: the X-ELM comparison at equal compute, per language, on held-out text.

The rules a reviewer checks (DESIGN.md, "Evaluation"):

- every non-special test token is scored once, with the same disjoint mask sets for every model
  (``SCORE_MASK_RATIO``: ceil(1 / ratio) passes per model), paragraphs longer than
  ``PARAGRAPH_MAX_LEN`` tokens cut into passages that fit;
- each per-language difference Δ = loss(X-ELM) − loss(dense) (negative: X-ELM better) gets a
  paired interval over the language's paragraphs (``xelm.app.intervals``: a long one's passages
  and a repeated one are one unit; paragraphs without a letter, UDHR's placeholders, are not text);
- the posterior router routes the tokens of a mask set on the other sets' likelihoods only;
- the headline ensemble is the config's ``experts.ensemble``, chosen on the validation split
  (whose report ranks every ensemble by ``choice_key``), and the second line is
  c-BTM's soft mixture over all experts, T = 0.1 (top-1 TF-IDF routing when the soft mixture is
  the headline): the test split chooses nothing;
- the registry's cluster experts, the plan and the dense baseline must belong together, and
  "equal compute" is claimed only when every language's training tokens match on both sides.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from experts.plan_integrity import check_dense_matches, check_experts_match_plan, coverage
from experts.registry import run_registry
from routing import XELM
from routing.ensemble import stack_states
from routing.masking import passages
from routing.posterior import PosteriorRouter, held_out_loglik
from routing.routes import UNSEEN_SCRIPT, Routing, softmax_rows
from routing.scoring import every_token_table, mixture_loss
from xelm.app.console import print_json
from xelm.app.intervals import paired_delta, summarize
from xelm.app.report import headline_sentence, write_report
from xelm.app.stageclock import StageClock
from xelm.app.transfer import article_classification, chance_levels, paragraphs, retrieval
from xelm.config import ENSEMBLES
from xelm.data import columns, load_corpus
from xelm.embed import embed_texts
from xelm.errors import XelmError
from xelm.files import read_json, write_json
from xelm.rundir import RunDir
from xelm.weights import load_weights

TOP1 = ("tfidf", 1)  # X-ELM's inference routing: one expert per text; what ablations compare
SOFT = ("tfidf", None)  # c-BTM: every expert, weights softmax(-d²/T)
DESCRIPTION = {"xelm:tfidf@1": "top-1 TF-IDF routing, one expert per text",
               "xelm:tfidf@all": "c-BTM soft mixture, every expert weighted by TF-IDF, T = 0.1"}
PROTOCOL = 2  # what is scored and how intervals are made; a stored result of another protocol is recomputed
PARAGRAPH_MAX_LEN = 128  # tokens of a scored text: longer paragraphs are cut into passages (short rows score cheaply)
SCORE_MASK_RATIO = 1 / 3  # 3 disjoint mask sets: every token scored once, each with 2/3 of its text as context


def _name(router: str, k: int | None) -> str:
    return f"xelm:{router}@{k if k is not None else 'all'}"


def _nll(lp_ExNxK, w_NxK, set_K, weights) -> np.ndarray:
    """Per text, the summed NLL of the mixture over all its tokens; ``weights`` is [N, E] or,
    per mask set, a list of [N, E] (a router blind to that set's tokens)."""
    total = np.zeros(w_NxK.shape[0])
    for j in np.unique(set_K):
        cols = set_K == j
        w_j = weights[j] if isinstance(weights, list) else weights
        n = w_NxK[:, cols].sum(1)
        total += np.nan_to_num(mixture_loss(lp_ExNxK[:, :, cols], w_NxK[:, cols], w_j) * n)
    return total


def _blind_posterior(xelm, cluster: list[str], texts: list[str], lp_ExNxK, w_NxK, set_K):
    """No peeking: the tokens of mask set j are routed on the other sets' likelihoods only, both by
    the posterior router and by the scripts fallback of the TF-IDF router (installed in ``xelm``).
    Returns those likelihoods [J, N, E] and the posterior routing of each mask set."""
    ll_JxNxE = held_out_loglik(lp_ExNxK, w_NxK, set_K)
    row_of = {t: i for i, t in enumerate(texts)}  # equal texts have equal masks, so equal evidence

    def loglik(ts: list[str]) -> np.ndarray:
        """Scored texts: set 0's blind evidence; any other text (the transfer probe's): the
        experts' own likelihoods, as ``xelm route`` has them."""
        ll_NxE = ll_JxNxE[0][[row_of.get(t, 0) for t in ts]]  # a copy
        new = [i for i, t in enumerate(ts) if t not in row_of]
        if new:
            ll_NxE[new] = xelm.loglik([ts[i] for i in new])
        return ll_NxE
    xelm.use_router("posterior", PosteriorRouter(cluster, loglik))
    return ll_JxNxE, [Routing(cluster, softmax_rows(ll_NxE), "posterior") for ll_NxE in ll_JxNxE]


def _routed_nll(xelm, texts: list[str], router: str, k: int | None, lang, posterior: list[Routing],
                lp_ExNxK, w_NxK, set_K) -> tuple[Routing, np.ndarray]:
    """``router``'s routing and the per-text NLL of its top-``k`` mixture; texts it sends to the
    scripts fallback are weighted, per mask set, by that set's blind posterior."""
    routing = xelm.route(texts, router=router, top_k=k, lang=lang)
    fallback = [i for i, note in enumerate(routing.notes) if UNSEEN_SCRIPT in note]
    per_set = []
    for p in posterior:
        w = routing.weights.copy()
        w[fallback] = p.top_k(k).weights[fallback]
        per_set.append(w)
    return routing, _nll(lp_ExNxK, w_NxK, set_K, per_set)


def scored_ensembles(routers, top_ks, n_experts: int) -> list[tuple[str, int | None]]:
    """(router, k) of every ensemble evaluation scores: each router at each top-k the registry
    has experts for (a one-cluster plan has no top-2), and the soft mixture over all."""
    return [(r, k) for r in routers for k in top_ks if k <= n_experts] + [SOFT]


def choice_key(summary: dict) -> tuple:
    """How validation ranks ensembles and configurations, best first: the most languages improved,
    then the fewest significant losses, then the lowest mean Δ."""
    return (-(summary["improved_fraction"] or 0.0), summary["significant_losses"], summary["mean_delta_loss"] or 0.0)


def _per_language(langs: list[str], nll: np.ndarray, count: np.ndarray) -> dict[str, float]:
    """Token-weighted mean loss per language."""
    tot, n = defaultdict(float), defaultdict(float)
    for lang, x, c in zip(langs, nll, count):
        if c > 0 and np.isfinite(x):
            tot[lang] += x
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


def _model_table(model, tok, texts):
    graphdef, state = nnx.split(model)
    return every_token_table(graphdef, stack_states([state]), tok, texts, SCORE_MASK_RATIO, max_len=PARAGRAPH_MAX_LEN)


SPLITS = ("test", "validation")


def _held_out(run: RunDir, split: str):
    """The run's parts the evaluation needs, checked to belong together, and the paragraphs of
    ``split`` in the experts' languages, the long ones cut into passages: (cfg, plan, tokenizer,
    cards, cluster cards, language -> own cluster expert, language -> HMR card, texts, their
    languages, the paragraph each text comes from)."""
    if split not in SPLITS:
        raise XelmError(f"--split {split!r}: evaluate on one of {', '.join(SPLITS)}")
    run_dir = run.root
    cfg, plan, tok = run.config(), run.plan(), run.tokenizer()
    cards = run_registry(run).cards()
    check_experts_match_plan(run, plan, cards)
    cluster_cards = [c for c in cards if c.get("kind") == "cluster"]
    own = {lang: c["name"] for c in cluster_cards for lang in c["languages"]}
    hmr = {c["languages"][0]: c for c in cards if c.get("kind") == "hmr" and len(c["languages"]) == 1}
    if not own:
        raise XelmError(f"no cluster experts in {run.registry_dir}: run `xelm expert train --all` first")
    missing = sorted(set(plan["clusters"]) - {c["name"] for c in cluster_cards})
    if missing:
        raise XelmError(f"the plan's cluster(s) {', '.join(missing)} have no expert yet: "
                        f"run `xelm expert train --run-dir {run_dir} --all` first")
    if not run.has_dense():
        raise XelmError(f"no dense baseline in {run.baseline_dir}: run `xelm baseline --run-dir {run_dir}` first")
    check_dense_matches(run, plan, cluster_cards, run.dense_summary())
    all_langs, all_texts = columns(load_corpus(cfg.data.corpus, languages=None)[split], "lang", "text")
    keep = [i for i, lang in enumerate(all_langs) if lang in own or lang in hmr]
    # short, each a natural unit of the article
    texts, langs = paragraphs([all_langs[i] for i in keep], [all_texts[i] for i in keep])
    texts, langs, unit = text_units(texts, langs)
    texts, paragraph = passages(tok, texts, PARAGRAPH_MAX_LEN)  # the long ones cut: every token is scored
    langs = [langs[i] for i in paragraph]
    if not texts:
        raise XelmError(f"the {split} split has no text in the experts' languages")
    return cfg, plan, tok, cards, cluster_cards, own, hmr, texts, langs, np.asarray(unit)[paragraph]


def text_units(texts: list[str], langs: list[str]) -> tuple[list[str], list[str], list[int]]:
    """The paragraphs worth scoring and the unit of evidence each belongs to. A paragraph without
    a letter is not text (UDHR marks a missing translation with '&1' or '@'; one language's whole
    test split is such marks) and is dropped; a paragraph repeated verbatim in one language is
    one unit for its interval (scored every time, but not counted as new evidence)."""
    out_t, out_l, unit, first = [], [], [], {}
    for text, lang in zip(texts, langs):
        if not any(ch.isalpha() for ch in text):
            continue
        out_t.append(text)
        out_l.append(lang)
        unit.append(first.setdefault((lang, text), len(first)))
    return out_t, out_l, unit


def evaluate(run_dir: str | Path, routers=("language", "tfidf", "posterior"), top_ks=(1, 2),
             progress: bool = True, split: str = "test") -> dict:
    """Score every model on ``split``; write ``metrics.json`` and the report into
    ``RunDir.report_for(split)``. Validation chooses configurations; test only reports."""
    run = RunDir(run_dir)
    run_dir = run.root
    clock = StageClock()
    with clock.stage("loading"):
        cfg, plan, tok, cards, cluster_cards, own, hmr, texts, langs, paragraph = _held_out(run, split)
    say = tqdm.write if progress else (lambda *a: None)

    # The equal-compute comparison routes among the cluster experts only: HMR experts had extra
    # training (and are judged on their own languages below).
    cluster = [c["name"] for c in cluster_cards]
    with clock.stage("loading"):
        xelm = XELM.from_run(run_dir, max_len=PARAGRAPH_MAX_LEN, experts=cluster)
    say(f"scoring every token of {len(texts):,} {split} passages: base, dense and {len(cluster)} experts, "
        f"{int(np.ceil(1 / SCORE_MASK_RATIO))} shared mask sets")
    # One pass per mask set and model gives every model's log-probability of every token; every
    # router's mixture then follows in numpy, without running a model again.
    with clock.stage("scoring every token"):
        xelm.pool.add("(base)", run.base())
        xelm.pool.add("(dense)", run.dense())
        graphdef, states = xelm.pool.stacked(("(base)", "(dense)", *cluster))
        lp_ExNxK, w_NxK, set_K = every_token_table(graphdef, states, tok, texts, SCORE_MASK_RATIO,
                                                   max_len=PARAGRAPH_MAX_LEN, batch_tokens=xelm.batch_tokens,
                                                   progress=progress, desc=f"scoring {len(cluster) + 2} models")
    count = w_NxK.sum(1)
    one = np.ones((len(texts), 1))
    nll = {"base": _nll(lp_ExNxK[[0]], w_NxK, set_K, one), "dense": _nll(lp_ExNxK[[1]], w_NxK, set_K, one)}
    lp_ExNxK = lp_ExNxK[2:]

    with clock.stage("routers"):
        ll_JxNxE, posterior = _blind_posterior(xelm, cluster, texts, lp_ExNxK, w_NxK, set_K)
        routings = {}
        for r, k in scored_ensembles(routers, top_ks, len(cluster)):
            if r == "posterior":
                per_set = [p.top_k(k) for p in posterior]
                routings[r, k] = per_set[0]
                nll[_name(r, k)] = _nll(lp_ExNxK, w_NxK, set_K, [p.weights for p in per_set])
                continue
            routings[r, k], nll[_name(r, k)] = _routed_nll(xelm, texts, r, k, langs if r == "language" else None,
                                                           posterior, lp_ExNxK, w_NxK, set_K)
    # Each language's own expert alone (HMR languages: their HMR expert).
    own_w = np.array([[float(own.get(lang) == name) for name in cluster] for lang in langs])
    no_own = ~own_w.any(1)
    own_w[no_own] = 1.0
    own_nll = np.where(no_own, np.nan, _nll(lp_ExNxK, w_NxK, set_K, own_w))
    with clock.stage("HMR experts"):
        hmr_rows = {lang: [i for i, lg in enumerate(langs) if lg == lang] for lang in hmr}
        for lang, card in hmr.items():
            rows = hmr_rows[lang]
            if rows:
                lp, w, sk = _model_table(xelm.pool.get(card["name"]), tok, [texts[i] for i in rows])
                own_nll[rows] = _nll(lp, w, sk, np.ones((len(rows), 1)))
    nll["own_expert"] = own_nll

    per_lang = {name: _per_language(langs, s, count) for name, s in nll.items()}
    tokens_by_lang = _tokens_by_lang(langs, count)
    headline = "xelm:" + cfg.experts.ensemble  # chosen on validation
    if headline not in nll:
        raise XelmError(f"experts.ensemble {cfg.experts.ensemble} is not among the ensembles scored here")
    second = _name(*SOFT) if headline != _name(*SOFT) else _name(*TOP1)
    seen = sorted(lang for lang in per_lang["dense"] if lang in own)
    rows_of = _rows_of(langs)
    # Every ensemble gets its intervals (numpy, seconds), so that validation can rank them on
    # significant losses too, not on the share improved alone (ties happen: 89.5% twice).
    ensembles = ["xelm:" + e for e in ENSEMBLES if "xelm:" + e in nll]
    with clock.stage("intervals"):
        intervals = {name: _intervals(seen, rows_of, nll[name], nll["dense"], count, paragraph) for name in ensembles}
    cluster_of = {lang: name for name, members in plan["clusters"].items() for lang in members}
    level_of = {lang: _stage_of(cfg, lang) for lang in seen}

    def grouped(deltas, key) -> dict:
        groups = defaultdict(dict)
        for lang, v in deltas.items():
            groups[key[lang]][lang] = v
        return {g: summarize(v, tokens_by_lang) for g, v in sorted(groups.items())}

    with clock.stage("new languages (HMR yardsticks)"):
        new_langs = _new_languages(run, tok, hmr, hmr_rows, texts, langs, paragraph, nll, per_lang, count)
    with clock.stage("routing accuracy"):
        routing = _routing_accuracy(xelm, texts, langs, own, {"tfidf": routings["tfidf", 1],
                                                              "posterior": Routing(cluster, softmax_rows(
                                                                  ll_JxNxE.mean(0)), "posterior")})
    # The transfer probe is trained and tested on validation + test articles: a test-split figure.
    with clock.stage("transfer"):
        transfer = _transfer(run, cfg, xelm, tok, set(own), progress) if split == "test" else {
            "skipped": "zero-shot transfer is reported with the test split only"}
    compute = _compute(run, cluster_cards)
    by_ensemble = {name: summarize(intervals[name], tokens_by_lang) for name in ensembles}
    summary = {**by_ensemble[headline],
               "equal_compute": compute["equal"],
               "by_resource_level": grouped(intervals[headline], level_of),
               "by_cluster": grouped(intervals[headline], {lang: cluster_of.get(lang, own[lang]) for lang in seen}),
               "second_line": by_ensemble[second],
               "by_ensemble": by_ensemble,
               "ensemble_ranking": sorted(by_ensemble, key=lambda name: choice_key(by_ensemble[name])),
               "mean_loss": {name: _mean(v.get(lang) for lang in seen) for name, v in per_lang.items()}}
    metrics = {
        "split": split,
        "headline": {"ensemble": headline, "second_line": second,
                     "descriptions": {n: DESCRIPTION.get(n, n) for n in (headline, second)},
                     "why": f"experts.ensemble, chosen on the validation split; the {split} split chooses nothing"
                            if headline != _name(*TOP1) else
                            f"X-ELM's inference routing (experts.ensemble); the {split} split chooses nothing",
                     "sign": "Δ = loss(X-ELM) − loss(dense): negative = X-ELM better",
                     "scoring": f"every token, {int(np.ceil(1 / SCORE_MASK_RATIO))} disjoint mask sets "
                                f"({SCORE_MASK_RATIO:.0%} of the tokens each), the same for every model",
                     "interval": f"95% paired interval over the {split} paragraphs of each language (the "
                                 "ratio estimator's standard error, Student t on paragraphs − 1 degrees of "
                                 "freedom; a long paragraph's passages and a repeated paragraph are one unit); "
                                 "bootstrap over languages for means",
                     "protocol": PROTOCOL},
        "summary": summary,
        "languages": {lang: {**{name: v.get(lang) for name, v in per_lang.items()},
                             **_deltas(intervals[headline], intervals[second], lang),
                             "expert": own.get(lang) or hmr[lang]["name"], "cluster": cluster_of.get(lang),
                             "resource_level": _stage_of(cfg, lang), "texts": len(rows_of[lang]),
                             "scored_tokens": tokens_by_lang[lang]}
                      for lang in sorted(set(langs))},
        "coverage": {"planned": len(cluster_of), "scored": len(seen),
                     "not_in_plan": coverage(run, plan),
                     "no_test_text": sorted(set(cluster_of) - set(seen))},
        "new_languages": new_langs,
        "routing": routing,
        "transfer": transfer,
        "compute": compute,
        "seconds_by_part": clock.seconds,  # where the evaluation's time goes
    }
    write_json(run.report_for(split) / "metrics.json", metrics)
    write_report(run_dir, metrics)
    return metrics


def _tokens_by_lang(langs: list[str], count: np.ndarray) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for lang, c in zip(langs, count):
        out[lang] += int(c)
    return out


def _rows_of(langs: list[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for i, lang in enumerate(langs):
        out[lang].append(i)
    return out


def _intervals(seen: list[str], rows_of: dict, nll_a: np.ndarray, nll_dense: np.ndarray, count: np.ndarray,
               paragraph: np.ndarray) -> dict:
    """Per language, (Δ, low, high) of model a against the dense model, paired over paragraphs."""
    return {lang: paired_delta(*_by_paragraph(paragraph[rows_of[lang]], nll_a[rows_of[lang]],
                                              nll_dense[rows_of[lang]], count[rows_of[lang]]))
            for lang in seen}


def _by_paragraph(paragraph_R: np.ndarray, *per_text_R: np.ndarray) -> list[np.ndarray]:
    """Sums per paragraph of per-passage arrays: a paragraph's passages share their context, so
    the interval counts the paragraph, not its passages, as one unit."""
    _, unit_R = np.unique(paragraph_R, return_inverse=True)
    return [np.bincount(unit_R, weights=x) for x in per_text_R]


def _scores(model, tok, texts: list[str], progress: bool, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Per text, one model's summed NLL over every token and the token count."""
    graphdef, state = nnx.split(model)
    lp, w, sk = every_token_table(graphdef, stack_states([state]), tok, texts, SCORE_MASK_RATIO,
                                  max_len=PARAGRAPH_MAX_LEN, progress=progress, desc=desc)
    return _nll(lp, w, sk, np.ones((len(texts), 1))), w.sum(1)


def evaluate_headline(run_dir: str | Path, split: str = "validation", progress: bool = True) -> dict:
    """Only TF-IDF top-1 X-ELM against the dense model (the default headline, and the one
    ablations compare clusterings by, whatever ``experts.ensemble`` says) -- scored exactly as
    :func:`evaluate` scores it (the same masks, the same blind fallback for unseen scripts), but
    each text runs through the dense model and its routed expert only instead of every model:
    the cheap evaluation an ablation of many rows needs. Writes ``headline.json`` beside the
    split's report."""
    run = RunDir(run_dir)
    _, plan, tok, _, cluster_cards, own, _, texts, langs, paragraph = _held_out(run, split)
    cluster = [c["name"] for c in cluster_cards]
    xelm = XELM.from_run(run.root, max_len=PARAGRAPH_MAX_LEN, experts=cluster)
    # Unseen-script texts are routed per mask set below: the posterior router's own pass over
    # them (every expert on every token) would be thrown away, so it answers uniform here.
    xelm.use_router("posterior", PosteriorRouter(cluster, lambda ts: np.zeros((len(ts), len(cluster)))))
    routing = xelm.route(texts, router=TOP1[0], top_k=TOP1[1])
    fallback = np.array([UNSEEN_SCRIPT in note for note in routing.notes], bool)
    chosen = routing.weights.argmax(1)
    nll_dense, count = _scores(run.dense(), tok, texts, progress, "scoring the dense model")
    nll_x = np.full(len(texts), np.nan)
    for e, name in enumerate(cluster):
        rows = np.flatnonzero((chosen == e) & ~fallback)
        if len(rows):
            nll_x[rows] = _scores(xelm.pool.get(name), tok, [texts[i] for i in rows], progress, f"scoring {name}")[0]
    rows = np.flatnonzero(fallback)
    if len(rows):  # unseen scripts: every expert on these texts, each mask set routed on the others
        graphdef, states = xelm.pool.stacked(tuple(cluster))
        lp, w, sk = every_token_table(graphdef, states, tok, [texts[i] for i in rows], SCORE_MASK_RATIO,
                                      max_len=PARAGRAPH_MAX_LEN, batch_tokens=xelm.batch_tokens)
        per_set = [Routing(cluster, softmax_rows(ll), "posterior").top_k(TOP1[1]).weights
                   for ll in held_out_loglik(lp, w, sk)]
        nll_x[rows] = _nll(lp, w, sk, per_set)
    dense_by_lang = _per_language(langs, nll_dense, count)
    seen = sorted(lang for lang in dense_by_lang if lang in own)
    intervals = _intervals(seen, _rows_of(langs), nll_x, nll_dense, count, paragraph)
    tokens = _tokens_by_lang(langs, count)
    cluster_of = {lang: name for name, members in plan["clusters"].items() for lang in members}
    groups = defaultdict(dict)
    for lang, v in intervals.items():
        groups[cluster_of.get(lang, own[lang])][lang] = v
    xelm_by_lang = _per_language(langs, nll_x, count)
    out = {"split": split, "ensemble": _name(*TOP1), "fingerprint": headline_fingerprint(run),
           "summary": {**summarize(intervals, tokens),
                       "mean_loss": {"dense": _mean(dense_by_lang[lang] for lang in seen),
                                     _name(*TOP1): _mean(xelm_by_lang.get(lang) for lang in seen)},
                       "by_cluster": {g: summarize(v, tokens) for g, v in sorted(groups.items())}},
           "languages": {lang: {"delta": d, "delta_ci": [lo, hi], "cluster": cluster_of.get(lang)}
                         for lang, (d, lo, hi) in intervals.items()}}
    write_json(run.report_for(split) / "headline.json", out)
    return out


def headline_fingerprint(run_dir: str | Path | RunDir) -> dict:
    """What a stored headline was computed from: the protocol, each cluster expert's checksum
    and the dense baseline's summary (rewritten whenever the baseline is trained)."""
    run = RunDir(run_dir)
    cards = [c for c in run_registry(run).cards() if c.get("kind") == "cluster"]
    return {"protocol": PROTOCOL, "experts": {c["name"]: c["checksum"] for c in sorted(cards, key=lambda c: c["name"])},
            "dense": hashlib.sha256(json.dumps(run.dense_summary(), sort_keys=True).encode()).hexdigest()[:16]}


def stored_headline(run_dir: str | Path, split: str) -> dict | None:
    """The split's ``headline.json`` if it was computed under this protocol from the run's
    present experts and dense baseline; None when absent or stale (so it is computed again)."""
    run = RunDir(run_dir)
    path = run.report_for(split) / "headline.json"
    if not path.is_file():
        return None
    stored = read_json(path, "headline evaluation", f"delete {path} and re-run")
    return stored if stored.get("fingerprint") == headline_fingerprint(run) else None


def _deltas(head: dict, second: dict, lang: str) -> dict:
    """A language's Δ and 95% interval for the headline (``delta``) and the second line."""
    h, f = head.get(lang), second.get(lang)
    if h is None:
        return {}
    return {"delta": h[0], "delta_ci": list(h[1:]), "second_delta": f[0], "second_delta_ci": list(f[1:])}


def _new_languages(run, tok, hmr, hmr_rows, texts, langs, paragraph, nll, per_lang, count) -> dict:
    """New languages: HMR vs base-branched vs dense-continued at equal tokens (+ untouched models),
    each difference with a paired interval over the language's paragraphs; and what continuing
    the dense model on the new language costs the languages it knew (``forgetting``: loss of the
    continued model minus the dense model's on one passage per seen language, every token).
    An HMR expert leaves every other expert's weights as they were, so it forgets nothing."""
    out = {}
    seen_rows = list({lang: i for i, lang in reversed(list(enumerate(langs))) if lang not in hmr}.values())
    for lang, card in sorted(hmr.items()):
        rows = hmr_rows[lang]
        if not rows:
            continue
        sub = [texts[i] for i in rows]
        entry = {"hmr": per_lang["own_expert"].get(lang), "parent": card["parent"],
                 "tokens": card["tokens_trained"], "base": per_lang["base"].get(lang),
                 "dense": per_lang["dense"].get(lang)}
        for parent in ("base", "dense"):
            path = run.control_model(parent, lang)
            if not (path / "model.json").exists():
                continue
            model = load_weights(path)
            lp, w, sk = _model_table(model, tok, sub)
            yard = _nll(lp, w, sk, np.ones((len(sub), 1)))
            entry[f"{parent}_continued"] = float(yard.sum() / w.sum())
            d, lo, hi = paired_delta(*_by_paragraph(paragraph[rows], nll["own_expert"][rows], yard, count[rows]))
            entry[f"hmr_vs_{parent}_continued"] = {"delta": d, "ci": [lo, hi]}
            if parent == "dense" and seen_rows:
                lp, w, sk = _model_table(model, tok, [texts[i] for i in seen_rows])
                d, lo, hi = paired_delta(_nll(lp, w, sk, np.ones((len(seen_rows), 1))), nll["dense"][seen_rows],
                                         count[seen_rows])
                entry["forgetting"] = {"delta": d, "ci": [lo, hi], "passages": len(seen_rows)}
        out[lang] = entry
    return out


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


def _transfer(run: RunDir, cfg, xelm, tok, languages: set[str], progress: bool = False) -> dict:
    """Zero-shot article classification and retrieval on held-out articles: dense vs X-ELM."""
    corpus = load_corpus(cfg.data.corpus)
    rows: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for split in ("validation", "test"):
        part = corpus[split]
        for lang, unit, text in zip(*columns(part, "lang", "unit", "text")):
            if lang in languages or lang == "eng":
                rows[lang][0].append(unit)
                rows[lang][1].append(text)
    rows = dict(rows)
    if "eng" not in rows:
        return {"skipped": "no English text to train the probe on"}
    # Every text both tasks need, embedded in one batched call per model (not one per language).
    needed = sorted({t for units, texts in rows.values() for t in (*texts, *paragraphs(units, texts)[0])})
    dense = run.dense()
    vectors = {"dense": embed_texts(dense, tok, needed, max_len=PARAGRAPH_MAX_LEN, progress=progress,
                                    desc="transfer: embedding"),
               "xelm": xelm.embed(needed, router=TOP1[0], top_k=TOP1[1])}
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
    """Training tokens on both sides, per language: "equal" only when the totals and every
    language's tokens match (the dense baseline replays the experts' batches)."""
    base, dense = run.base_summary(), run.dense_summary()
    experts = {c["name"]: c["tokens_trained"] for c in cards}
    by_lang: dict[str, int] = defaultdict(int)
    for c in cards:
        for lang, n in (c.get("tokens_by_lang") or {}).items():
            by_lang[lang] += n
    dense_by_lang = dense.get("tokens_by_lang")
    differ = None if dense_by_lang is None else sorted(
        lang for lang in set(by_lang) | set(dense_by_lang) if by_lang.get(lang, 0) != dense_by_lang.get(lang, 0))
    total_equal = sum(experts.values()) == dense["tokens_trained"]
    if dense_by_lang is None:
        why = "the dense baseline has no per-language token counts (trained before they were kept): retrain it"
    elif differ:
        why = f"{len(differ)} language(s) got different tokens on the two sides, e.g. {', '.join(differ[:5])}"
    elif not total_equal:
        why = "the total tokens differ"
    else:
        why = "every language's training tokens match (the dense model replayed the experts' batches)"
    return {"base_tokens": base["tokens"], "dense_tokens": dense["tokens_trained"],
            "expert_tokens": experts, "experts_total": sum(experts.values()),
            "dense_languages": len(dense.get("languages") or []) or None,
            "tokens_by_lang": {"dense": dense_by_lang, "experts": dict(sorted(by_lang.items()))},
            "languages_differing": differ, "equal": bool(total_equal and differ == []), "why": why,
            "schedule": {"dense": dense.get("config"), "experts": {c["name"]: c.get("config") for c in cards}}}


def cmd_evaluate(args) -> int:
    m = evaluate(args.run_dir, progress=not args.json, split=args.split)
    if args.json:
        print_json(m)
        return 0
    s = m["summary"]
    print(headline_sentence(m))
    for name, loss in sorted(s["mean_loss"].items(), key=lambda kv: kv[1] or 9e9):
        print(f"  {name:<22}{'n/a' if loss is None else f'{loss:.3f}'}")  # None: no language scored
    print(StageClock.of(m["seconds_by_part"]).table(indent="  "))
    print(f"report: {RunDir(args.run_dir).report_for(args.split) / 'report.md'}")
    return 0


