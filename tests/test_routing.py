"""Routers, the stacked ensemble and the route / fill-mask / embed CLI, on the shared tiny run
(two typology experts over six languages, trained for a few steps: the maths and the
contracts are tested here, not quality)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from routing import XELM, Routing, score_model
from routing.ensemble import label_logprobs, mixture_vocab_logprobs
from routing.langid import LangId
from routing.langid import load_or_fit as load_or_fit_langid
from routing.routes import UNSEEN_SCRIPT, keep_top_k
from routing.scoring import mixture_loss, prepare
from xelm.app.cli import build_parser, dispatch
from xelm.batches import length_bucketed
from xelm.errors import XelmError

TEXTS = ["Alle Menschen sind frei und gleich an Würde und Rechten geboren.",
         "Tous les êtres humains naissent libres et égaux en dignité et en droits.",
         "Todos los seres humanos nacen libres e iguales en dignidad y derechos.",
         "All human beings are born free and equal in dignity and rights."]
PORTUGUESE = "Todos os seres humanos nascem livres e iguais em dignidade e em direitos."
CHEROKEE = "ᏂᎦᏓ ᎠᏂᏴᏫ ᏂᎨᎫᏓᎸᎾ ᎠᎴ ᎤᏂᏠᏱ"


@pytest.fixture(scope="module")
def run(tiny_expert_run, tmp_path_factory) -> Path:
    """A copy of the shared tiny expert run (routers write DIR/router/), with a language
    identifier over the experts' languages plus Portuguese (no expert has it) and Russian."""
    run = tmp_path_factory.mktemp("routing") / "run"
    shutil.copytree(tiny_expert_run, run)
    load_or_fit_langid(run, languages=languages(run) + ["por", "rus"])
    return run


def languages(run: Path) -> list[str]:
    return sorted(lang for members in json.loads((run / "clusters.json").read_text())["clusters"].values()
                  for lang in members)


@pytest.fixture(scope="module")
def xelm(run) -> XELM:
    return XELM.from_run(run)


def _expert_of(xelm: XELM, lang: str) -> str:
    return next(c["name"] for c in xelm.cards if lang in c["languages"])


# ----------------------------------------------------------------------------- routers
@pytest.mark.parametrize("router,lang", [("tfidf", None), ("posterior", None), ("langid", None),
                                         ("language", "deu")])
def test_router_weights_are_distributions_and_top_k_keeps_at_most_k(xelm, router, lang):
    for k in (None, 1, 2):
        r = xelm.route(TEXTS, router=router, top_k=k, lang=lang)
        assert r.weights.shape == (len(TEXTS), len(xelm.names)) and r.names == xelm.names
        assert (r.weights >= 0).all() and np.allclose(r.weights.sum(1), 1.0)
        assert ((r.weights > 0).sum(1) <= (k or len(xelm.names))).all()
        best = r.to_json(0)["experts"]
        assert [e["weight"] for e in best] == sorted((e["weight"] for e in best), reverse=True)


def test_keep_top_k_renormalises_and_breaks_ties_by_column():
    w = keep_top_k(np.array([[0.5, 0.3, 0.2], [0.25, 0.25, 0.5]]), 2)
    assert np.allclose(w, [[0.625, 0.375, 0], [1 / 3, 0, 2 / 3]])


def test_text_routers_send_test_texts_to_their_languages_expert(xelm, run, udhr):
    test = udhr["test"].filter(lambda r: r["lang"] in languages(run))
    gold = [_expert_of(xelm, lang) for lang in test["lang"]]
    for router in ("tfidf", "langid"):
        r = xelm.route(test["text"], router=router, top_k=1)
        top = [r.names[i] for i in r.weights.argmax(1)]
        assert np.mean([t == g for t, g in zip(top, gold)]) >= 0.9, router


def test_language_router_falls_back_to_typologically_nearest_expert(xelm):
    r = xelm.route(PORTUGUESE, lang="por").to_json()
    assert r["experts"] == [{"name": _expert_of(xelm, "spa"), "weight": 1.0}]
    assert "no expert was trained on por" in r["fallback"] and "nearest" in r["fallback"]
    assert UNSEEN_SCRIPT not in r  # evaluation re-routes unseen scripts only, not this fallback
    assert "fallback" not in xelm.route(TEXTS[0], lang="deu").to_json()
    # langid identifies Portuguese, which no expert has: the language router's fallback applies
    r = xelm.route(PORTUGUESE, router="langid").to_json()
    assert r["language"] == "por" and "fallback" in r and r["experts"][0]["name"] == _expert_of(xelm, "spa")


def test_text_of_no_known_n_gram_gets_uniform_weights_and_says_so(xelm):
    """Emoji and symbols share only the space that pads every word with the experts' text: that
    is no evidence (it made every text "known", so the fallback never fired)."""
    texts = ["🙂 🙂", "∑∫ ∂∇", TEXTS[0]]
    r = xelm.route(texts, router="tfidf")
    for i in (0, 1):
        assert "no character n-gram" in r.notes[i]["fallback"]
        np.testing.assert_allclose(r.weights[i], 1 / len(xelm.names))
    assert "fallback" not in r.notes[2]
    assert xelm.router("langid").langid.predict(texts)[2].tolist() == [False, False, True]


def test_a_temperature_variant_routes_over_the_same_experts(run, xelm):
    """``xelm serve``'s per-request temperature: the served experts (not the registry's current
    ones, nor all of them when a subset is served), their loaded models shared."""
    one = XELM.from_run(run, experts=[xelm.names[0]])
    hot = one.with_temperature(10.0)
    assert hot.names == one.names and hot.pool is one.pool and hot.temperature == 10.0 and one.temperature == 0.1
    sharp, flat = xelm.route(TEXTS, router="tfidf"), xelm.with_temperature(10.0).route(TEXTS, router="tfidf")
    assert (flat.weights.max(1) < sharp.weights.max(1)).all()
    with pytest.raises(XelmError, match="emperature"):
        xelm.with_temperature(-1.0)


def test_text_in_a_script_no_expert_has_seen_is_routed_by_posterior(xelm):
    r = xelm.route([CHEROKEE, TEXTS[0]], router="tfidf")
    assert "script (Cher)" in r.to_json(0)["fallback"] and "fallback" not in r.to_json(1)
    assert r.notes[0][UNSEEN_SCRIPT] == "Cher" and UNSEEN_SCRIPT not in r.notes[1]
    assert np.allclose(r.weights[0], xelm.route([CHEROKEE], router="posterior").weights[0])


def test_langid_reloads_and_reports_test_accuracy(run, udhr):
    meta = json.loads((run / "router" / "langid" / "langid.json").read_text())
    assert meta["test_accuracy"] >= 0.9 and len(meta["languages"]) == len(languages(run)) + 2
    again = LangId.load(run / "router" / "langid")
    assert again.predict(TEXTS + [PORTUGUESE])[0] == ["deu", "fra", "spa", "eng", "por"]


# ---------------------------------------------------------------------------- ensemble
def _direct_logprobs(model, b):
    """One expert, run directly (no stacking, no vmap): [B, K, V] log-probabilities."""
    h = model(b.input_ids_BxS, b.segment_ids_BxS, b.positions_BxS)
    picked = np.take_along_axis(np.asarray(h), b.mask_positions_BxK[..., None], axis=1)
    return np.asarray(jax.nn.log_softmax(model.mlm_logits(picked), axis=-1))


def test_stacked_call_equals_loop_and_mixture_is_a_hand_computed_distribution(xelm):
    names = tuple(xelm.names)
    graphdef, states = xelm.pool.stacked(names)
    seqs, masks = prepare(xelm.tokenizer, TEXTS)
    rows, b = next(length_bucketed(seqs, masks, mask_id=xelm.tokenizer.mask_token_id, pad_id=0,
                                   batch_tokens=4 * xelm.max_len, max_len=xelm.max_len))
    assert len(rows) == 4
    loop = np.stack([_direct_logprobs(xelm.pool.get(n), b) for n in names])  # [E, B, K, V]
    for one_by_one in (False, True):  # vmap, and lax.map (what big batches use on CPU)
        stacked = np.asarray(label_logprobs(graphdef, one_by_one, states, b))
        assert np.allclose(stacked, np.take_along_axis(loop, b.mask_labels_BxK[None, ..., None], -1)[..., 0], atol=1e-5)

    w = np.array([[0.2, 0.8], [1.0, 0.0], [0.1, 0.9], [0.5, 0.5]])
    with np.errstate(divide="ignore"):
        logw = np.log(w)
    mix = np.asarray(mixture_vocab_logprobs(graphdef, False, states, logw, b))
    assert np.allclose(np.exp(mix).sum(-1), 1.0, atol=1e-5)
    by_hand = np.log(np.einsum("be,ebkv->bkv", w, np.exp(loop)))
    assert np.allclose(mix, by_hand, atol=1e-4)


def test_score_is_per_text_deterministic_and_matches_a_single_model(xelm):
    loss = xelm.score(TEXTS)
    assert loss.shape == (4,) and np.isfinite(loss).all()
    assert np.allclose(xelm.score(TEXTS[::-1])[::-1], loss, atol=1e-5)  # masks follow the text, not the batch
    name = xelm.names[0]
    only = Routing(xelm.names, np.eye(len(xelm.names))[[0] * 4], "fixed")
    assert np.allclose(xelm.score(TEXTS, router=only), score_model(xelm.pool.get(name), xelm.tokenizer, TEXTS),
                       atol=1e-5)


def test_mixture_loss_from_the_label_table_equals_score_for_any_routing(xelm):
    """Evaluation scores every router from one pass per expert: the same numbers as score()."""
    lp_ExNxK, w_NxK = xelm.label_logprobs(TEXTS)
    assert lp_ExNxK.shape[:2] == (len(xelm.names), 4) and (lp_ExNxK <= 0).all()
    for router, k in (("tfidf", 1), ("posterior", 2)):
        r = xelm.route(TEXTS, router=router, top_k=k)
        assert np.allclose(mixture_loss(lp_ExNxK, w_NxK, r.weights), xelm.score(TEXTS, router=r), atol=1e-5)


def test_routing_among_a_subset_of_the_registry(run):
    name = XELM.from_run(run).names[1]
    sub = XELM.from_run(run, experts=[name])
    for router, lang in (("tfidf", None), ("posterior", None), ("language", "deu")):
        assert sub.route(TEXTS, router=router, lang=lang).names == [name]
    with pytest.raises(XelmError, match="no expert named 'nope'"):
        XELM.from_run(run, experts=["nope"])
    # The TF-IDF space of a subset is fitted on its languages only (an evaluation of the cluster
    # experts routes alike whatever HMR experts the registry also holds), cached apart.
    whole = XELM.from_run(run)
    assert sorted(sub.router("tfidf").space.names) == sorted(sub.cards[0]["languages"])
    assert sorted(whole.router("tfidf").space.names) == sorted(lang for c in whole.cards for lang in c["languages"])
    assert len(list((run / "router").glob("tfidf*"))) == 2


def test_a_query_loads_only_the_experts_it_needs(run):
    fresh = XELM.from_run(run)
    fresh.score(TEXTS[:1], lang="deu")
    assert fresh.pool.loaded == [_expert_of(fresh, "deu")]


def test_embeddings_are_the_weighted_mean_of_the_experts(xelm):
    from xelm.embed import embed_texts

    vecs = xelm.embed(TEXTS, lang="deu")
    assert vecs.shape == (4, xelm.pool.get(xelm.names[0]).cfg.hidden)
    assert np.allclose(vecs, embed_texts(xelm.pool.get(_expert_of(xelm, "deu")), xelm.tokenizer, TEXTS), atol=1e-4)
    w = np.tile([0.25, 0.75], (4, 1))
    mixed = xelm.embed(TEXTS, router=Routing(xelm.names, w, "fixed"))
    each = [embed_texts(xelm.pool.get(n), xelm.tokenizer, TEXTS) for n in xelm.names]
    assert np.allclose(mixed, sum(wi * e for wi, e in zip(w[0], each)), atol=1e-4)


def test_fill_mask_returns_top_k_tokens_sorted(xelm):
    out = xelm.fill_mask("All human beings are born <mask> and equal.", top_k=4)
    assert len(out) == 4 and {"token", "token_str", "score", "sequence"} <= set(out[0])
    scores = [c["score"] for c in out]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0
    assert not {c["token"] for c in out} & set(xelm.tokenizer.all_special_ids)
    two = xelm.fill_mask("All <mask> beings are born <mask>.", top_k=2, experts_top_k=1)
    assert len(two) == 2 and all(len(c) == 2 for c in two)


@pytest.mark.parametrize("call,match", [
    (lambda x: x.route([""]), "empty"),
    (lambda x: x.route([]), "no text"),
    (lambda x: x.route(TEXTS, router="magic"), "unknown router"),
    (lambda x: x.route(TEXTS, top_k=0), "out of range"),
    (lambda x: x.route(TEXTS, top_k=3), "out of range"),
    (lambda x: x.route(TEXTS, router="language"), "--lang"),
    (lambda x: x.route(TEXTS, router="posterior", lang="deu"), "--router language"),
    (lambda x: x.route(TEXTS, lang="xx"), "language code"),
    (lambda x: x.fill_mask("no mask here"), "<mask>"),
    (lambda x: x.fill_mask("<mask>"), "nothing but"),
    (lambda x: x.fill_mask("a <mask>", top_k=0), "out of range"),
])
def test_bad_inputs_are_xelm_errors(xelm, call, match):
    with pytest.raises(XelmError, match=match):
        call(xelm)


def test_run_without_experts_is_a_clear_error(run, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run / "config.yaml", bare / "config.yaml")
    shutil.copytree(run / "tokenizer", bare / "tokenizer")
    with pytest.raises(XelmError, match="no experts"):
        XELM.from_run(bare)
    with pytest.raises(XelmError, match="not an xelm run directory"):
        XELM.from_run(tmp_path / "nowhere")


# --------------------------------------------------------------------------------- CLI
def _cli(argv: list[str], capsys):
    args = build_parser().parse_args(argv)
    assert dispatch(args) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_json_shapes(run, capsys):
    r = _cli(["route", "--run-dir", str(run), "--text", TEXTS[1], "--json"], capsys)
    assert r["router"] == "tfidf" and {"name", "weight"} == set(r["experts"][0])
    r = _cli(["route", "--run-dir", str(run), "--text", PORTUGUESE, "--lang", "por", "--json"], capsys)
    assert r["language"] == "por" and "fallback" in r and len(r["experts"]) == 1
    f = _cli(["fill-mask", "--run-dir", str(run), "--text", "All human beings are <mask>.", "--top-k", "3",
              "--json"], capsys)
    assert len(f) == 3 and {"token", "token_str", "score"} <= set(f[0])
    e = _cli(["embed", "--run-dir", str(run), "--text", TEXTS[0], "--text", TEXTS[1], "--json"], capsys)
    assert len(e["texts"]) == 2 and len(e["texts"][0]["embedding"]) == e["dim"]


def test_cli_user_mistakes_raise_xelm_errors(run, capsys):
    with pytest.raises(XelmError, match="empty"):
        _cli(["route", "--run-dir", str(run), "--text", " "], capsys)
    with pytest.raises(XelmError, match="unknown router"):
        _cli(["fill-mask", "--run-dir", str(run), "--text", "a <mask>", "--router", "nope"], capsys)
