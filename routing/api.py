"""``XELM``: route texts to a run's experts and ensemble them (score, fill-mask, embed).

Every method takes ``router=`` (a router name, or a precomputed :class:`Routing`),
``top_k=`` (experts kept per text) and ``lang=`` (the language router's input). Texts that
need the same experts run together, with only those experts loaded and stacked.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np

from experts.registry import run_registry
from routing import langid as langid_mod
from routing import tfidf as tfidf_mod
from routing.ensemble import mixture_embeddings, mixture_vocab_logprobs, sequential
from routing.language import LanguageRouter
from routing.masking import MASK_RATIO, check_texts, encode
from routing.pool import ExpertPool
from routing.posterior import PRIORS, PosteriorRouter, validation_prior
from routing.routes import UNSEEN_SCRIPT, Routing, check_temperature, check_top_k
from routing.runfiles import expert_scripts, expert_texts, letter_scripts
from routing.scoring import BATCH_TOKENS, MAX_LEN, label_table, mixture_nll, per_token, prepare
from xelm.batches import length_bucketed
from xelm.errors import XelmError
from xelm.fillmask import check_top_k as check_top_k_tokens
from xelm.fillmask import encode_masked, fillers
from xelm.rundir import RunDir

ROUTERS = ("language", "tfidf", "posterior", "langid")
MASK_MARKERS = re.compile(r"\s*(?:<mask>|\[MASK\])\s*")
POSTERIOR_SEED, POSTERIOR_MASK_RATIO = 1, 0.5  # see routing/posterior.py


def mask_context(text: str) -> str:
    """The text without its masks: what routers read for fill-mask."""
    text = check_texts(text)[0]
    if not MASK_MARKERS.search(text):
        raise XelmError("the text has no <mask>: write <mask> where the word to fill goes")
    context = MASK_MARKERS.sub(" ", text).strip()
    if not context:
        raise XelmError("the text is nothing but <mask>: give some words around it")
    return context


class XELM:
    def __init__(self, run_dir: str | Path, registry, tokenizer, cache_size: int = 8, temperature: float = 0.1,
                 prior: str = "uniform", batch_tokens: int = BATCH_TOKENS, max_len: int | None = None,
                 experts: list[str] | None = None):
        """``experts``: route among these experts of the registry only (default: all of them)."""
        self.run_dir, self.registry, self.tokenizer = Path(run_dir), registry, tokenizer
        self.registry_cards = registry.cards()
        if not self.registry_cards:
            raise XelmError(f"the registry {registry.root} has no experts: train them with "
                            f"`xelm expert train --run-dir {run_dir} --all`")
        self.cards = self.registry_cards
        if experts is not None:
            by_name = {c["name"]: c for c in self.registry_cards}
            unknown = [n for n in experts if n not in by_name]
            if unknown or not experts:
                raise XelmError(f"no expert named {', '.join(map(repr, unknown)) or '(none given)'} in "
                                f"{registry.root}: choose among {', '.join(by_name)}")
            self.cards = [by_name[n] for n in experts]
        if prior not in PRIORS:
            raise XelmError(f"unknown posterior prior {prior!r}: choose {' or '.join(PRIORS)}")
        self.names = [c["name"] for c in self.cards]
        self.pool = ExpertPool(registry, cache_size)
        self.temperature, self.prior, self.batch_tokens = check_temperature(temperature), prior, batch_tokens
        self.max_len = max_len or min(RunDir(run_dir).config().model.max_len, MAX_LEN)
        self._routers: dict[str, object] = {}
        self._scripts: set[str] | None = None
        self._loglik_memo: tuple[tuple[str, ...], np.ndarray] | None = None

    @classmethod
    def from_run(cls, run_dir: str | Path, registry: str | None = None, **options) -> XELM:
        """The run's experts (``DIR/registry`` unless ``registry`` is given) and tokenizer."""
        run = RunDir(run_dir)
        run.config()  # a clear error if this is not a run directory
        return cls(run.root, run_registry(run, registry), run.tokenizer(), **options)

    def with_temperature(self, temperature: float) -> XELM:
        """The same experts (these cards, whatever the registry holds now; the loaded models
        shared) routed by TF-IDF at ``temperature``, a constructor option."""
        variant = copy.copy(self)
        variant.temperature = check_temperature(temperature)
        variant._routers, variant._loglik_memo = {}, None
        return variant

    # ------------------------------------------------------------------------- routing
    def router(self, name: str):
        if name not in ROUTERS:
            raise XelmError(f"unknown router {name!r}: choose one of {', '.join(ROUTERS)}")
        if name not in self._routers:
            self._routers[name] = self._make_router(name)
        return self._routers[name]

    def _make_router(self, name: str):
        if name == "language":
            return LanguageRouter(self.cards, lambda: expert_texts(self.run_dir, self.cards))
        if name == "tfidf":
            whole = self.cards is self.registry_cards  # a subset (evaluation: the cluster experts) has its own cache
            cache = "tfidf" if whole else f"tfidf-{tfidf_mod.fingerprint(self.cards)[:12]}"
            return tfidf_mod.load_or_fit(self.run_dir, self.cards, self.temperature, cache)
        if name == "langid":
            return langid_mod.LangIdRouter(langid_mod.load_or_fit(self.run_dir), self.router("language"))
        prior = None
        if self.prior == "validation":
            def texts():
                return [t for ts in expert_texts(self.run_dir, self.cards, "validation").values() for t in ts]
            prior = validation_prior(self.run_dir, self.cards, texts, self.loglik)
        return PosteriorRouter(self.names, self.loglik, prior)

    def use_router(self, name: str, router) -> None:
        """Route ``name`` (also the scripts fallback, for ``posterior``) with ``router`` from now
        on: evaluation installs a posterior router that is blind to the tokens being scored."""
        if name not in ROUTERS:
            raise XelmError(f"unknown router {name!r}: choose one of {', '.join(ROUTERS)}")
        self._routers[name] = router

    def route(self, texts, router: str | Routing | None = None, top_k: int | None = None,
              lang: str | list[str] | None = None) -> Routing:
        """Weights over the experts per text. Default router: ``language`` when ``lang`` is
        given, else ``tfidf``."""
        texts = check_texts(texts)
        check_top_k(top_k, len(self.names))
        if isinstance(router, Routing):
            if router.weights.shape != (len(texts), len(router.names)):
                raise XelmError(f"the routing given has {len(router.weights)} rows for {len(texts)} texts")
            return router.top_k(top_k)
        name = router or ("language" if lang is not None else "tfidf")
        routing = self.router(name).route(texts, top_k, lang)
        return self._unseen_scripts(texts, routing, top_k) if name in ("tfidf", "langid") else routing

    def _unseen_scripts(self, texts: list[str], routing: Routing, top_k) -> Routing:
        """Texts mostly in scripts no expert was trained on go to the posterior router: n-grams
        say nothing there, but the experts' likelihoods (byte fallback) still do."""
        if self._scripts is None:
            self._scripts = expert_scripts(self.run_dir, self.cards)
        unseen = {}
        for i, text in enumerate(texts):
            counts = letter_scripts(text)
            new = {s: n for s, n in counts.items() if s not in self._scripts}
            if sum(new.values()) > 0.5 * sum(counts.values()):
                unseen[i] = max(new, key=new.get)
        if not unseen:
            return routing
        rows = sorted(unseen)
        post = self.router("posterior").route([texts[i] for i in rows], top_k)
        weights, notes = routing.weights.copy(), list(routing.notes)
        for j, i in enumerate(rows):
            weights[i] = post.weights[j]
            notes[i] = {"fallback": f"the text is in a script ({unseen[i]}) that no expert was trained on: "
                                    f"routed by posterior (the experts' own likelihoods) instead of {routing.router}",
                        UNSEEN_SCRIPT: unseen[i]}
        return Routing(routing.names, weights, routing.router, notes)

    def loglik(self, texts: list[str]) -> np.ndarray:
        """[N, E] each expert's masked-LM log-likelihood of each text (posterior routing). The
        last call's answer is kept: top-1 and top-k routing of the same texts pay once."""
        key = tuple(texts)
        if self._loglik_memo is None or self._loglik_memo[0] != key:
            lp_ExNxK, w_NxK = self.label_logprobs(texts, POSTERIOR_SEED, POSTERIOR_MASK_RATIO)
            self._loglik_memo = key, (lp_ExNxK * w_NxK[None]).sum(2).T
        return self._loglik_memo[1]

    def label_logprobs(self, texts, seed: int = 0, ratio: float = MASK_RATIO, experts: list[str] | None = None):
        """Each expert's log-probability of the true token at each masked position: ([E, N, K],
        [N, K] 1 on real masks), on the masks ``score`` uses for the same ``seed``. Any routing's
        mixture loss follows from it without running a model again (``scoring.mixture_loss``)."""
        texts = check_texts(texts)
        seqs, masks = prepare(self.tokenizer, texts, self.max_len, seed, ratio)
        graphdef, states = self.pool.stacked(tuple(experts or self.names))
        return label_table(graphdef, states, seqs, masks, self.tokenizer, self.batch_tokens, self.max_len)

    def groups(self, routing: Routing):
        """(expert names, text rows, [rows, experts] weights) for each set of experts needed."""
        for names, rows in routing.groups().items():
            cols = [routing.names.index(n) for n in names]
            yield names, rows, routing.weights[np.ix_(rows, cols)]

    # ----------------------------------------------------------------------- ensemble
    def score(self, texts, router=None, top_k: int | None = None, lang=None, seed: int = 0,
              return_counts: bool = False):
        """Per-text masked-LM loss (nats per masked token) of the routed mixture, on masks that
        depend only on the text and ``seed``; with ``return_counts`` also the masked tokens per text."""
        texts = check_texts(texts)
        routing = self.route(texts, router, top_k, lang)
        seqs, masks = prepare(self.tokenizer, texts, self.max_len, seed)
        total, count = np.zeros(len(texts)), np.zeros(len(texts), np.int64)
        for names, rows, w in self.groups(routing):
            graphdef, states = self.pool.stacked(names)
            t, c = mixture_nll(graphdef, states, w, [seqs[i] for i in rows], [masks[i] for i in rows],
                               self.tokenizer, self.batch_tokens, self.max_len)
            total[rows], count[rows] = t, c
        loss = per_token(total, count)
        return (loss, count) if return_counts else loss

    def mask_logprobs(self, text: str, router=None, top_k: int | None = None, lang=None):
        """The mixture's log p(token | text) over the vocabulary at each ``<mask>`` (or ``[MASK]``)
        of ``text``: ([masks, V], the token ids of the text, the masks' positions in them)."""
        text = check_texts(text)[0]
        tok, context = self.tokenizer, mask_context(text)
        routing = self.route([context], router, top_k, lang)
        seq, where = encode_masked(tok, text, self.max_len)
        (names, _, w), = self.groups(routing)
        graphdef, states = self.pool.stacked(names)
        _, b = next(length_bucketed([seq], [where], mask_id=tok.mask_token_id, pad_id=tok.pad_token_id,
                                    batch_tokens=1, max_len=self.max_len))
        logp = mixture_vocab_logprobs(graphdef, sequential(b), states, np.log(w), b)
        return np.array(logp)[0, :len(where)], seq, where

    def fill_mask(self, text: str, top_k: int = 5, router=None, experts_top_k: int | None = None, lang=None):
        """The ``top_k`` likeliest tokens for each ``<mask>`` (or ``[MASK]``) under the mixture,
        as the transformers pipeline returns them: [{"token", "token_str", "score", "sequence"}],
        or one such list per mask when there are several. ``experts_top_k`` limits the experts."""
        check_top_k_tokens(self.tokenizer, top_k)
        logp_KxV, seq, where = self.mask_logprobs(text, router, experts_top_k, lang)
        return fillers(self.tokenizer, seq, where, logp_KxV, top_k)  # as one model's (xelm.fillmask)

    def embed(self, texts, router=None, top_k: int | None = None, lang=None) -> np.ndarray:
        """[N, hidden] the routing-weighted mean of the experts' mean-pooled final hidden states."""
        texts = check_texts(texts)
        routing = self.route(texts, router, top_k, lang)
        seqs = encode(self.tokenizer, texts, self.max_len)
        out = None
        for names, rows, w in self.groups(routing):
            graphdef, states = self.pool.stacked(names)
            empty = [np.zeros(0, np.int32)] * len(rows)
            for b_rows, b in length_bucketed([seqs[i] for i in rows], empty, mask_id=self.tokenizer.mask_token_id,
                                             pad_id=self.tokenizer.pad_token_id, batch_tokens=self.batch_tokens,
                                             max_len=self.max_len):
                w_BxE = np.zeros((len(b.input_ids_BxS), len(names)), np.float32)
                w_BxE[:len(b_rows)] = w[b_rows]
                vec = np.asarray(mixture_embeddings(graphdef, sequential(b), states, w_BxE, b))
                if out is None:
                    out = np.zeros((len(texts), vec.shape[1]), np.float32)
                out[np.asarray(rows)[b_rows]] = vec[:len(b_rows)]
        return out
