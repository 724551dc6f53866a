"""The evaluation rules a reviewer checks (DESIGN.md, "Evaluation"): identical exposure, the
same schedule shape, every token scored, paired intervals, no peeking, a fixed plan."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from experts.plan_integrity import plan_languages
from experts.registry import run_registry
from experts.training import budget_config, train_all, train_baseline
from routing import XELM
from routing.masking import encode, mask_sets, passages
from routing.posterior import held_out_loglik
from routing.routes import softmax_rows
from routing.scoring import MAX_LEN, every_token_table, label_table, packed_rows
from xelm.app.cli import main
from xelm.app.evaluate import (
    SCORE_MASK_RATIO,
    _blind_posterior,
    _compute,
    _intervals,
    evaluate,
    scored_ensembles,
    text_units,
)
from xelm.app.intervals import paired_delta, significant, summarize
from xelm.app.report import headline_sentence
from xelm.batches import MIN_LEN, bucket
from xelm.errors import XelmError
from xelm.rundir import RunDir

TEXTS = ["All human beings are born free and equal in dignity and rights.",
         "Everyone has the right to life, liberty and security of person.",
         "Toute personne a droit à la liberté de pensée, de conscience et de religion.",
         "Jeder hat das Recht auf Bildung."]


def test_mask_sets_cover_every_token_once():
    ids = np.array([0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 1, 2, 2], np.int32)
    special = np.array([0, 1, 2])
    sets = mask_sets(ids, special, 0.2, seed=3)
    assert len(sets) == 5
    flat = np.concatenate(sets)
    assert sorted(flat) == list(range(1, 11))  # every non-special position exactly once
    assert max(len(s) for s in sets) - min(len(s) for s in sets) <= 1
    assert all((np.diff(s) > 0).all() for s in sets)
    assert [s.tolist() for s in mask_sets(ids, special, 0.2, seed=3)] == [s.tolist() for s in sets]


def test_long_paragraphs_are_cut_into_passages_that_score_every_token(tiny_tokenizer):
    from xelm.tokenizer import load_tokenizer
    tok = load_tokenizer(tiny_tokenizer)
    limit = max(len(ids) for ids in encode(tok, [TEXTS[0], TEXTS[3]], 10_000))  # these two fit
    long = " ".join(TEXTS * 12)  # about ten times the limit
    texts = [TEXTS[0], long, "主要" * 80, TEXTS[3]]  # the third has no space to cut at
    out, source = passages(tok, texts, limit)
    assert out[0] == TEXTS[0] and out[-1] == TEXTS[3] and source[0] == 0 and source[-1] == 3
    assert source == sorted(source) and source.count(1) > 5 and source.count(2) > 2
    assert max(map(len, encode(tok, out, 10_000))) <= limit  # every passage fits: nothing truncated
    for i, text in enumerate(texts):  # and together they are the text, cut between words where it has them
        mine = [t for t, s in zip(out, source) if s == i]
        assert "".join("".join(mine).split()) == "".join(text.split())
    assert all(t.split()[0] in long.split() for t, s in zip(out, source) if s == 1)
    whole = sum(map(len, encode(tok, texts, 10_000))) - 2 * len(texts)
    cut = sum(map(len, encode(tok, out, 10_000))) - 2 * len(out)
    assert abs(cut - whole) <= len(out)  # re-tokenizing at the cuts moves a token at most


def test_packed_scoring_equals_each_text_scored_alone(tiny_expert_run):
    """Scoring packs texts into shared rows (no padding to pay on every pass); each text is its
    own segment there, so every token's log-probability is the one it gets in a row of its own."""
    xelm = XELM.from_run(tiny_expert_run)
    graphdef, states = xelm.pool.stacked(tuple(xelm.names))
    texts = TEXTS + [TEXTS[0] + " " + TEXTS[1], "Bildung."]
    lp_ExNxK, w_NxK, set_K = every_token_table(graphdef, states, xelm.tokenizer, texts, SCORE_MASK_RATIO)
    seqs = encode(xelm.tokenizer, texts, MAX_LEN)
    row_len = bucket(max(map(len, seqs)), MIN_LEN, MAX_LEN)  # every_token_table's rows
    rows = packed_rows([len(s) for s in seqs], row_len)
    assert len(rows) < len(texts) and sorted(i for r in rows for i in r) == list(range(len(texts)))
    assert all(sum(len(seqs[i]) for i in r) <= row_len for r in rows)
    sets = [mask_sets(s, np.array(xelm.tokenizer.all_special_ids), SCORE_MASK_RATIO) for s in seqs]
    for j in range(len(sets[0])):
        alone_ExNxK, alone_NxK = label_table(graphdef, states, seqs, [ms[j] for ms in sets], xelm.tokenizer,
                                             batch_tokens=1)  # a row of its own for each text
        np.testing.assert_array_equal(w_NxK[:, set_K == j], alone_NxK)
        real = alone_NxK > 0  # (padding slots: the unpacked table keeps whatever the model gave there)
        np.testing.assert_allclose(lp_ExNxK[:, :, set_K == j][:, real], alone_ExNxK[:, real], atol=2e-5)


def test_posterior_router_is_blind_to_the_tokens_it_is_scored_on(tiny_expert_run):
    """The routing evidence for mask set j does not move when set j's log-probabilities do
    (and does move when another set's do): the router never reads a scored token."""
    xelm = XELM.from_run(tiny_expert_run)
    graphdef, states = xelm.pool.stacked(tuple(xelm.names))
    lp_ExNxK, w_NxK, set_K = every_token_table(graphdef, states, xelm.tokenizer, TEXTS, SCORE_MASK_RATIO)
    n_tokens = [len(xelm.tokenizer(t)["input_ids"]) - 2 for t in TEXTS]
    assert w_NxK.sum(1).tolist() == n_tokens  # every non-special token scored once
    ll_JxNxE = held_out_loglik(lp_ExNxK, w_NxK, set_K)
    rng = np.random.default_rng(0)
    for j in range(ll_JxNxE.shape[0]):
        changed = lp_ExNxK.copy()
        changed[:, :, set_K == j] = rng.normal(-5, 3, changed[:, :, set_K == j].shape)
        after = held_out_loglik(changed, w_NxK, set_K)
        np.testing.assert_array_equal(after[j], ll_JxNxE[j])
        others = [i for i in range(len(after)) if i != j]
        assert not np.allclose(after[others], ll_JxNxE[others])
    # installed in the XELM, the blind router answers for the scored texts from that evidence and
    # for any other text (the transfer probe embeds more) as the ordinary posterior router does
    other = "Artikel 26: Jeder hat das Recht auf Bildung."
    expected = xelm.route([other], router="posterior").weights
    _blind_posterior(xelm, xelm.names, TEXTS, lp_ExNxK, w_NxK, set_K)
    r = xelm.route([TEXTS[1], other, TEXTS[0]], router="posterior")
    np.testing.assert_allclose(r.weights[[2, 0]], softmax_rows(ll_JxNxE[0][[0, 1]]), rtol=1e-6)
    np.testing.assert_allclose(r.weights[1], expected[0], rtol=1e-6)


def test_a_one_expert_plan_is_scored_without_top_2():
    assert scored_ensembles(("tfidf", "posterior"), (1, 2), 1) == [("tfidf", 1), ("posterior", 1), ("tfidf", None)]
    assert ("language", 2) in scored_ensembles(("language",), (1, 2), 2)


@pytest.mark.parametrize("paragraphs", [3, 5, 10])
def test_per_language_intervals_keep_their_level_with_few_paragraphs(paragraphs):
    # Null languages (the two models equally good): a 95% interval may exclude zero for ~5% of
    # them. A percentile bootstrap over five paragraphs does so for ~15%, over three for ~25%.
    rng = np.random.default_rng(paragraphs)
    false_calls, n_lang = 0, 2000
    for _ in range(n_lang):
        count = rng.integers(40, 121, paragraphs).astype(float)
        d = rng.normal(0, 0.3, paragraphs) * count + rng.normal(0, 0.3 * np.sqrt(count))  # paragraph + token noise
        _, lo, hi = paired_delta(d, np.zeros(paragraphs), count)
        false_calls += significant(lo, hi) != 0
    assert 0.03 <= false_calls / n_lang <= 0.07


def test_one_paragraph_gives_no_interval_and_no_significant_result():
    d, lo, hi = paired_delta(np.array([5.0]), np.array([1.0]), np.array([10.0]))
    assert (d, lo, hi) == (0.4, None, None)
    s = summarize({"x": (d, lo, hi), "y": (-0.3, -0.5, -0.1)}, {"x": 10, "y": 50})
    assert (s["significant_wins"], s["significant_losses"]) == (1, 0)


def test_placeholders_are_not_scored_and_a_repeated_paragraph_is_one_unit():
    texts = ["&1", "Alle Menschen sind frei.", "@", "Alle Menschen sind frei.", "Jeder hat das Recht.", "Alle Menschen sind frei."]
    langs = ["deu", "deu", "deu", "deu", "deu", "nld"]
    kept, kept_langs, unit = text_units(texts, langs)
    assert kept == texts[1:2] + texts[3:]
    assert kept_langs == ["deu", "deu", "deu", "nld"]
    assert unit[0] == unit[1] and len(set(unit)) == 3  # the same text in another language is its own unit


def test_paired_interval():
    count = np.full(40, 10.0)
    a = np.random.default_rng(1).normal(30, 3, 40)
    assert paired_delta(a, a, count) == (0.0, 0.0, 0.0)
    d, lo, hi = paired_delta(a - 5, a, count)  # 0.5 nats better on every paragraph
    assert d == pytest.approx(-0.5) and lo == pytest.approx(-0.5) and hi == pytest.approx(-0.5)
    noisy = a + np.random.default_rng(2).normal(0, 5, 40)
    d, lo, hi = paired_delta(noisy, a, count)
    assert lo < d < hi and lo < 0 < hi + 0.5
    # A long paragraph's passages are one unit: cutting paragraphs into passages leaves the interval
    # what it was for the paragraphs whole, and counting the passages apart would not.
    cut = np.repeat(np.arange(40), 3)  # each paragraph in three passages
    parts = [np.repeat(x / 3, 3) for x in (noisy, a, count)]
    whole = _intervals(["x"], {"x": list(range(40))}, noisy, a, count, np.arange(40))
    assert _intervals(["x"], {"x": list(range(120))}, *parts, cut)["x"] == pytest.approx(whole["x"], abs=1e-12)
    assert _intervals(["x"], {"x": list(range(120))}, *parts, np.arange(120))["x"] != pytest.approx(whole["x"])
    s = summarize({"x": (-0.5, -0.6, -0.4), "y": (0.1, -0.1, 0.3), "z": (0.2, 0.1, 0.3)}, {"x": 100, "y": 300, "z": 50})
    assert (s["significant_wins"], s["significant_losses"], s["scored_tokens_median"]) == (1, 1, 100)
    assert s["improved_fraction"] == pytest.approx(1 / 3)
    assert s["mean_delta_ci"][0] <= s["mean_delta_loss"] <= s["mean_delta_ci"][1]


def test_schedules_have_the_same_shape(tiny_expert_run):
    cfg = RunDir(tiny_expert_run).config()
    per_step = cfg.data.batch_size * cfg.data.seq_len
    expert, dense = budget_config(cfg, ["eng"], 40 * per_step), budget_config(cfg, ["eng", "fra"], 160 * per_step)
    for c in (expert, dense):
        assert c.train.warmup_steps / c.train.steps == pytest.approx(cfg.experts.warmup_fraction)
        assert c.curriculum[-2].until == pytest.approx(1 - cfg.experts.decay_fraction)


def test_dense_baseline_replays_the_experts_batches(tiny_expert_run, tmp_path):
    """Every language gets exactly the training tokens its expert gave it."""
    run = tmp_path / "run"
    shutil.copytree(tiny_expert_run, run)
    summary = train_baseline(run, progress=False)
    experts: dict[str, int] = {}
    cards = [c for c in run_registry(run).cards() if c["kind"] == "cluster"]
    for card in cards:
        for lang, n in card["tokens_by_lang"].items():
            experts[lang] = experts.get(lang, 0) + n
    assert summary["tokens_by_lang"] == experts
    assert summary["tokens_trained"] == sum(c["tokens_trained"] for c in cards)
    assert summary["config"]["steps"] == sum(c["config"]["steps"] for c in cards)
    assert _compute(RunDir(run), cards)["equal"]

    # One language's tokens moved to another (same total): no equal-compute claim, said once.
    lang, other = sorted(summary["tokens_by_lang"])[:2]
    moved = {**summary["tokens_by_lang"], lang: summary["tokens_by_lang"][lang] - 1,
             other: summary["tokens_by_lang"][other] + 1}
    RunDir(run).dense_summary_file.write_text(json.dumps({**summary, "tokens_by_lang": moved}))
    compute = _compute(RunDir(run), cards)
    assert not compute["equal"] and compute["languages_differing"] == [lang, other]
    metrics = {"summary": {"languages": 1, "equal_compute": compute["equal"], "mean_delta_ci": [-0.1, 0.1],
                           "significant_wins": 0, "significant_losses": 0, "improved_fraction": 1.0,
                           "mean_delta_loss": -0.01}, "compute": compute, "headline": {"ensemble": "xelm:tfidf@1"}}
    sentence = headline_sentence(metrics)
    assert "NOT at equal compute" in sentence and lang in sentence


def test_a_run_with_experts_keeps_its_plan(tiny_expert_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_expert_run, run)
    plan_file = run / "clusters.json"
    before = plan_file.read_bytes()
    plots = {p.name: p.read_bytes() for p in run.glob("clusters_*")}
    registry_before = sorted(p.name for p in (run / "registry").iterdir())
    assert main(["cluster", "--run-dir", str(run), "--method", "typology", "--k", "2"]) == 2
    assert "plan is fixed" in capsys.readouterr().err
    # The same file under other spellings: absolute, through '..', through a symlink, no --run-dir.
    (tmp_path / "alias").symlink_to(run)
    for out in (plan_file.resolve(), run / ".." / "run" / "clusters.json", tmp_path / "alias" / "clusters.json"):
        assert main(["cluster", "--run-dir", str(run), "--method", "typology", "--k", "2", "--out", str(out)]) == 2
        assert "plan is fixed" in capsys.readouterr().err
        assert main(["cluster", "--languages", "eng,fra,deu,spa", "--method", "typology", "--k", "2",
                     "--out", str(out)]) == 2
        assert "plan is fixed" in capsys.readouterr().err
    assert plan_file.read_bytes() == before
    assert {p.name: p.read_bytes() for p in run.glob("clusters_*")} == plots
    assert sorted(p.name for p in (run / "registry").iterdir()) == registry_before

    # A plan swapped under the experts by hand: training, the baseline and evaluation refuse.
    plan = json.loads(before)
    first, second = list(plan["clusters"])
    plan["clusters"][second].append(plan["clusters"][first].pop())
    plan_file.write_text(json.dumps(plan))
    for stage in (lambda: train_all(run, progress=False), lambda: train_baseline(run, progress=False),
                  lambda: evaluate(run, progress=False)):
        with pytest.raises(XelmError, match="do not belong"):
            stage()
    assert not RunDir(run).has_dense()

    # An expert removed after training: evaluation names it, not a top-k range.
    plan_file.write_bytes(before)
    removed = list(plan["clusters"])[0]
    run_registry(run).remove(removed)
    with pytest.raises(XelmError, match=f"{removed} have no expert yet"):
        evaluate(run, progress=False)


def test_plan_languages_cover_the_corpus_except_held_out(tiny_base_run):
    langs = plan_languages(tiny_base_run)
    assert "por" not in langs  # held out for HMR in udhr-tiny
    assert len(langs) > 400 and {"eng", "fra", "cmn"} <= set(langs)
