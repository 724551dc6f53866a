"""Property-based tests (hypothesis) of the routing and ensembling invariants, for any text:
weights are a distribution over the experts, top-k keeps at most k of them, and the mixture
over the vocabulary is a probability distribution — on arbitrary Unicode, text that is empty
once normalised, very long text and mixed scripts."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routing import XELM
from routing.routes import keep_top_k
from xelm.errors import XelmError

SENTENCES = ["All human beings are born free and equal in dignity and rights.",
             "Alle Menschen sind frei und gleich an Würde und Rechten geboren.",
             "Tous les êtres humains naissent libres et égaux en dignité et en droits.",
             "Все люди рождаются свободными и равными в своем достоинстве и правах.",
             "人人生而自由,在尊严和权利上一律平等。", "ᏂᎦᏓ ᎠᏂᏴᏫ ᏂᎨᎫᏓᎸᎾ ᎠᎴ ᎤᏂᏠᏱ", "كل الناس يولدون أحرارا"]
TEXTS = st.one_of(
    st.text(min_size=1, max_size=120),  # any Unicode, control characters and all
    st.lists(st.sampled_from(SENTENCES), min_size=1, max_size=5).map(" ".join),  # mixed scripts
    st.tuples(st.sampled_from(SENTENCES), st.integers(30, 120)).map(lambda t: " ".join([t[0]] * t[1])),  # long
    st.sampled_from(["\u200b", "\u0301\u0301", "\ufeff\u200d", "\x00\x01", "!?…", "🙂🙂"]),  # empty once normalised
)
PROPERTY = settings(max_examples=20, deadline=None, derandomize=True,  # the same examples in CI every time
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def xelm(tiny_expert_run, tmp_path_factory) -> XELM:
    run = tmp_path_factory.mktemp("properties") / "run"
    shutil.copytree(tiny_expert_run, run)  # routers write their files into the run directory
    return XELM.from_run(run)


def _assert_distribution(w: np.ndarray, k: int | None):
    assert (w >= 0).all() and np.allclose(w.sum(-1), 1.0, atol=1e-6)
    assert ((w > 0).sum(-1) <= (k or w.shape[-1])).all()


@PROPERTY
@given(text=TEXTS, router=st.sampled_from(["tfidf", "posterior", "langid"]), k=st.sampled_from([None, 1, 2]))
def test_routing_weights_are_a_distribution_with_at_most_k_experts(xelm, text, router, k):
    if not text.strip():
        with pytest.raises(XelmError, match="empty"):
            xelm.route([text], router=router, top_k=k)
        return
    r = xelm.route([text], router=router, top_k=k)
    assert r.weights.shape == (1, len(xelm.names))
    _assert_distribution(r.weights, k)


@PROPERTY
@given(text=TEXTS, router=st.sampled_from(["tfidf", "posterior"]), k=st.sampled_from([1, 2]))
def test_the_mixture_at_a_mask_is_a_probability_distribution(xelm, text, router, k):
    logp_KxV, _, _ = xelm.mask_logprobs("<mask> " + text, router=router, top_k=k)
    assert np.isfinite(logp_KxV).all()
    assert np.allclose(np.exp(logp_KxV).sum(-1), 1.0, atol=1e-4)
    loss = xelm.score([text] if text.strip() else ["x"], router=router, top_k=k)
    assert np.isnan(loss[0]) or loss[0] >= 0  # NaN only when nothing in the text can be masked


@settings(max_examples=200, deadline=None, derandomize=True)
@given(w=st.lists(st.lists(st.floats(0, 1e6), min_size=1, max_size=6), min_size=1, max_size=4)
       .filter(lambda rows: len({len(r) for r in rows}) == 1 and all(sum(r) > 0 for r in rows)),
       k=st.integers(1, 6))
def test_keep_top_k_keeps_a_distribution(w, k):
    w = np.array(w) / np.array(w).sum(1, keepdims=True)
    if k > w.shape[1]:
        with pytest.raises(XelmError, match="out of range"):
            keep_top_k(w, k)
        return
    out = keep_top_k(w, k)
    _assert_distribution(out, k)
    assert (out[w == 0] == 0).all()  # never gives weight to an expert that had none
