"""The engine behind ``xelm serve``: one thread runs ``routing.XELM``, fed by dynamic batches.

Requests that arrive together (while the engine is busy, or within a short wait when it is
idle) form one batch, up to a token budget; the batch's jobs with the same options are routed
in one ``XELM.route`` call, and their texts that need the same experts run together. Every
answer depends on its own text only (masks are seeded by the text), so batching does not
change it beyond float rounding.

Shapes: the ensemble's compiled calls see only the few (rows, length) shapes of
``routing.scoring.shape_grid`` (a text padded to its own length bucket, rows to 1/4/16/64),
and warm-up compiles every one of them for the all-experts stack before ``/ready`` says yes:
otherwise each new mix of batch size and lengths would compile on the request path (seconds).
The maths is ``XELM``'s (same masks, same mixture), one compiled call per batch shape.

A watcher hashes the registry's index; when the experts' fingerprint changes it builds and
warms a new ``XELM`` (routers refit, experts loaded) off the request path and swaps it in
between batches: requests in flight finish on the old one, later ones see the new experts.
One ``XELM`` (and one HF fast tokenizer, which threads must not share) per thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experts.registry import run_registry
from routing import XELM, Routing
from routing.api import mask_context
from routing.ensemble import mixture_embeddings, mixture_label_nll, mixture_vocab_logprobs, sequential
from routing.masking import MASK_RATIO, choose_masks, encode
from routing.runfiles import fingerprint
from routing.scoring import CALL_TOKENS, fixed_shape_batches, mask_slots, padded_batch, per_token, shape_grid
from xelm.app.serve_metrics import Metrics
from xelm.errors import XelmError
from xelm.fillmask import encode_masked, fillers
from xelm.rundir import RunDir

log = logging.getLogger("xelm.serve")
ONE_BY_ONE_ABOVE = 128  # padded tokens: bigger serving batches run the experts one by one (lax.map), faster
# on CPU from a few hundred tokens up (benchmarks/README.md, serving)
MAX_RELOAD_BACKOFF_S = 60.0  # a registry that keeps failing to load is retried at most this seldom
WARM_TEXT = "All human beings are born free and equal in dignity and rights."
CLI_FLAGS = re.compile(r"--(lang|router|top-k|experts|temperature)\b")


class Overloaded(Exception):
    """The queue is full (or the server is stopping): answer 503 with Retry-After."""


def api_message(e: Exception) -> str:
    """XELM's one-line message, with its CLI flags spelled as the JSON fields."""
    return CLI_FLAGS.sub(lambda m: m.group(1).replace("-", "_"), " ".join(str(e).split()))


@dataclass(frozen=True)
class Options:
    """What must match for jobs to share one XELM call."""
    router: str
    top_k: int | None  # fill-mask only: tokens listed per mask
    experts: int | None  # experts kept per text
    temperature: float | None
    with_lang: bool


@dataclass
class Job:
    kind: str  # route | score | fill-mask | embed
    options: Options
    texts: list[str]
    langs: list[str] | None  # one per text, or None
    tokens: int
    future: asyncio.Future


@dataclass
class Served:
    """One generation of the registry: the model that answers, and what it was built from."""
    model: XELM
    fingerprint: str
    index_digest: str
    variants: OrderedDict  # temperature -> XELM sharing ``model``'s expert pool


class Engine:
    def __init__(self, run_dir: str | Path, registry: str | None = None, *, max_batch_tokens: int = 8192,
                 max_queue: int = 256, max_wait_s: float = 0.005, watch_interval_s: float = 1.0,
                 temperature: float = 0.1, prior: str = "uniform", metrics: Metrics | None = None,
                 call_tokens: int = CALL_TOKENS, warm_up: bool = True):
        self.run_dir, self.registry_arg, self.call_tokens = Path(run_dir), registry, call_tokens
        self.warm_up = warm_up
        self.max_batch_tokens, self.max_queue, self.max_wait_s = max_batch_tokens, max_queue, max_wait_s
        self.watch_interval_s, self.temperature, self.prior = watch_interval_s, temperature, prior
        self.metrics = metrics or Metrics()
        self.index_path = run_registry(self.run_dir, registry).index_path
        self.served = self._build()  # here, not later: a bad run or an empty registry fails before listening
        self.tokenizer = RunDir(self.run_dir).tokenizer()  # the counting thread's own
        self.ready, self.ready_error, self.closing = False, None, False
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="xelm-engine")
        self.counter = ThreadPoolExecutor(1, thread_name_prefix="xelm-count")  # off the event loop: long texts
        self.queue: asyncio.Queue | None = None
        self.counting = 0  # requests admitted whose tokens are being counted (event-loop thread only)
        self._carry: Job | None = None
        self._tasks: list[asyncio.Task] = []
        self._seen_digest = self.served.index_digest
        self.shapes_seen: set[tuple] = set()  # (kind, experts, rows, length, mask slots) of calls run
        self.metrics.experts.set(len(self.served.model.names))
        self.metrics.queue_depth.set_function(self.depth)

    # ------------------------------------------------------------------ generations
    def _index_digest(self) -> str:
        try:
            return hashlib.sha256(self.index_path.read_bytes()).hexdigest()
        except FileNotFoundError:
            return ""

    def _build(self) -> Served:
        digest = self._index_digest()  # before reading the cards: a change meanwhile shows at the next look
        model = XELM.from_run(self.run_dir, self.registry_arg, temperature=self.temperature, prior=self.prior,
                              cache_size=1 << 16)  # keep every expert loaded
        return Served(model, fingerprint(model.registry_cards), digest, OrderedDict())

    @staticmethod
    def _load(model: XELM) -> None:
        """Fit the default router and load every expert, so the first requests do not pay."""
        model.route([WARM_TEXT], "tfidf")
        for name in model.names:
            model.pool.get(name)

    def grid(self, model: XELM) -> list[tuple]:
        """The calls warm-up compiles: score and embed, every batch shape, all experts stacked
        (the default router's groups), as (kind, experts, rows, length, mask slots)."""
        n = len(model.names)
        return [(kind, n, b, s, mask_slots(s) if kind == "score" else 1)
                for kind in ("score", "embed") for b, s in shape_grid(model.max_len, self.call_tokens)]

    def _compile(self, model: XELM, shapes, served: Served | None = None, threads: int = 1) -> None:
        """Run each (kind, experts, rows, length, mask slots) call once on padding, so that it is
        compiled (XLA compiles outside the GIL: ``threads`` at once); stop early if ``served`` is
        no longer the generation served."""
        t0, tok = time.perf_counter(), model.tokenizer
        stacks = {n: model.pool.stacked(tuple(model.names[:n])) for n in sorted({shape[1] for shape in shapes})}

        def one(shape) -> int:
            kind, n, b, s, k = shape
            if served is not None and self.served is not served:
                return 0
            graphdef, states = stacks[n]
            batch = padded_batch([], [], b, s, k, tok.mask_token_id, tok.pad_token_id)
            fn = {"score": mixture_label_nll, "embed": mixture_embeddings, "fill-mask": mixture_vocab_logprobs}[kind]
            fn(graphdef, one_by_one(batch), states, np.zeros((b, n), np.float32), batch).block_until_ready()
            return 1

        with ThreadPoolExecutor(threads, thread_name_prefix="xelm-compile") as pool:
            done = sum(pool.map(one, shapes))
        log.info("compiled %d batch shapes for %d experts in %.1f s", done, len(model.names),
                 time.perf_counter() - t0)

    def _warm(self, model: XELM) -> None:
        """Ready once the experts are loaded and, unless ``warm_up`` is off (a development server
        that is ready at once and compiles each batch shape on its first request), every batch
        shape is compiled."""
        self._load(model)
        if self.warm_up:
            self._compile(model, self.grid(model), threads=os.cpu_count() or 1)  # nothing is served yet

    def _build_if_changed(self) -> Served | None:
        """A new generation if the experts changed, ready to serve the shapes traffic has used
        so far (the rest of the grid compiles after the swap, while it serves)."""
        served = self._build()
        if served.fingerprint == self.served.fingerprint:
            return None
        self._load(served.model)
        self._compile(served.model, self._hot_shapes(served.model))
        return served

    def _hot_shapes(self, model: XELM) -> list[tuple]:
        """The calls traffic has made, for ``model``'s experts (all experts stay all experts)."""
        n, before = len(model.names), len(self.served.model.names)
        return sorted({(kind, n if e == before else min(e, n), b, s, k) for kind, e, b, s, k in list(self.shapes_seen)})

    def _swap(self, served: Served, how: str) -> None:
        old = self.served
        self.served = served
        self.metrics.reloads.inc()
        self.metrics.experts.set(len(served.model.names))
        log.warning("registry changed (%s): %d -> %d experts (%s)", how, len(old.model.names),
                    len(served.model.names), ", ".join(served.model.names))

    async def _watch(self) -> None:
        """Reload when the registry's index changes. A reload that fails (a registry mid-change,
        or damaged) keeps the old experts serving and is retried, backing off to once a minute
        while it keeps failing, so a broken registry does not cost a rebuild every interval."""
        loop = asyncio.get_running_loop()
        backoff = 0.0
        while True:
            await asyncio.sleep(self.watch_interval_s + backoff)
            try:
                digest = await loop.run_in_executor(None, self._index_digest)
                if digest == self._seen_digest:  # unchanged, or back to what is served: nothing failing
                    backoff = 0.0
                    continue
                served = await loop.run_in_executor(None, self._build_if_changed)
                self._seen_digest = digest
                if served is not None:
                    self._swap(served, "watcher")
                    rest = [shape for shape in self.grid(served.model) if shape not in self._hot_shapes(served.model)]
                    self._tasks.append(asyncio.create_task(self._compile_rest(loop, served, rest)))
                backoff = 0.0
            except Exception as e:  # a registry mid-change or damaged: keep serving the old one, retry
                backoff = min(MAX_RELOAD_BACKOFF_S, max(2 * backoff, self.watch_interval_s))
                log.warning("registry not reloaded (retrying in %.0f s): %s", self.watch_interval_s + backoff,
                            api_message(e))

    async def _compile_rest(self, loop, served: Served, shapes) -> None:
        try:
            await loop.run_in_executor(None, self._compile, served.model, shapes, served)
        except Exception as e:  # requests compile what they need themselves: never fatal
            log.warning("background compilation stopped: %s", api_message(e))
        finally:
            self._tasks = [t for t in self._tasks if not t.done() and t is not asyncio.current_task()]

    def _model_for(self, served: Served, temperature: float | None) -> XELM:
        """The XELM for a TF-IDF temperature (it is a constructor option): one per temperature,
        all sharing the generation's loaded experts."""
        if temperature is None or temperature == self.temperature:
            return served.model
        if temperature not in served.variants:
            served.variants[temperature] = served.model.with_temperature(temperature)  # this generation's experts
            while len(served.variants) > 8:
                served.variants.popitem(last=False)
        served.variants.move_to_end(temperature)
        return served.variants[temperature]

    # ------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.queue = asyncio.Queue(self.max_queue)
        self._tasks = [asyncio.create_task(self._batcher()), asyncio.create_task(self._warm_then_watch(loop))]

    async def _warm_then_watch(self, loop) -> None:
        try:
            await loop.run_in_executor(self.executor, self._warm, self.served.model)
        except Exception as e:
            self.ready_error = api_message(e)
            log.error("warm-up failed: %s", self.ready_error)
            return
        self.ready = True
        await self._watch()

    async def stop(self) -> None:
        """After the HTTP server has drained: nothing is queued any more."""
        self.closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.executor.shutdown(wait=True)
        self.counter.shutdown(wait=True)

    def depth(self) -> int:
        return (self.queue.qsize() if self.queue else 0) + (self._carry is not None)

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens the texts take in a batch (each capped at ``max_len``); on ``counter``'s thread."""
        ids = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
        return sum(min(len(seq), self.served.model.max_len) for seq in ids)

    @contextlib.contextmanager
    def admission(self):
        """Hold a place for a request while its tokens are counted (before it can be queued):
        requests being counted and requests queued together are at most ``max_queue``, so a
        flood is answered 503 at once instead of waiting, bodies in memory, for the counter."""
        if self.closing:
            raise Overloaded("the server is shutting down")
        if self.counting + self.depth() >= self.max_queue:
            raise Overloaded(f"the queue is full ({self.max_queue} requests waiting)")
        self.counting += 1
        try:
            yield
        finally:
            self.counting -= 1

    def submit(self, job: Job) -> asyncio.Future:
        if self.closing:
            raise Overloaded("the server is shutting down")
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise Overloaded(f"the queue is full ({self.max_queue} requests waiting)") from None
        return job.future

    # -------------------------------------------------------------------- batching
    async def _next_batch(self) -> list[Job]:
        job = self._carry or await self.queue.get()
        self._carry = None
        if self.queue.empty() and self.max_wait_s > 0:  # the engine was idle: let siblings arrive
            await asyncio.sleep(self.max_wait_s)
        batch, tokens = [job], job.tokens
        while not self.queue.empty():
            nxt = self.queue.get_nowait()
            if tokens + nxt.tokens > self.max_batch_tokens:
                self._carry = nxt
                break
            batch.append(nxt)
            tokens += nxt.tokens
        return batch

    async def _batcher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [j for j in await self._next_batch() if not j.future.done()]  # done: the client left
            if not batch:
                continue
            try:
                answers = await loop.run_in_executor(self.executor, self._run_batch, batch)
            except Exception as e:  # never lose the batcher: the batch's requests get the error
                log.exception("batch failed")
                answers = [(j, e, "") for j in batch]
            for job, answer, fp in answers:
                if job.future.done():
                    continue
                if isinstance(answer, Exception):
                    job.future.set_exception(answer)
                else:
                    job.future.set_result((answer, fp))

    def _run_batch(self, batch: list[Job]) -> list[tuple[Job, object, str]]:
        t0 = time.perf_counter()
        groups: dict[tuple[str, Options], list[Job]] = {}
        for job in batch:
            groups.setdefault((job.kind, job.options), []).append(job)
        out = []
        for (kind, options), jobs in groups.items():
            out += self._run_safely(kind, options, jobs)
        m = self.metrics
        m.batch_requests.observe(len(batch))
        m.batch_texts.observe(sum(len(j.texts) for j in batch))
        m.batch_tokens.observe(sum(j.tokens for j in batch))
        m.batch_seconds.observe(time.perf_counter() - t0)
        return out

    def _run_safely(self, kind: str, options: Options, jobs: list[Job], retried: bool = False):
        """One XELM call for ``jobs``; if it fails, a registry change is picked up and the call
        retried once, then each job runs alone so that one bad request fails alone."""
        served = self.served
        try:
            answers = self._run(served, kind, options, jobs)
            return [(j, a, served.fingerprint) for j, a in zip(jobs, answers)]
        except Exception as e:
            if not retried and self._index_digest() != served.index_digest:
                try:
                    fresh = self._build()
                    if fresh.fingerprint != self.served.fingerprint:
                        self._swap(fresh, "on a failed request")
                except Exception:
                    pass
                return self._run_safely(kind, options, jobs, retried=True)
            if len(jobs) > 1:
                return [a for j in jobs for a in self._run_safely(kind, options, [j], retried=True)]
            if not isinstance(e, XelmError):
                log.exception("request failed")
            return [(jobs[0], e, served.fingerprint)]

    def _run(self, served: Served, kind: str, o: Options, jobs: list[Job]) -> list:
        """Per job, its answer (JSON-able), from one XELM call over all the jobs' texts."""
        model = self._model_for(served, o.temperature)
        texts = [t for j in jobs for t in j.texts]
        lang = [code for j in jobs for code in j.langs] if o.with_lang else None
        if kind == "fill-mask":
            routing = model.route([mask_context(t) for t in texts], o.router, o.experts, lang)
            per_text = fill_mask(model, texts, routing, o.top_k, self.call_tokens, self.shapes_seen)
        else:
            routing = model.route(texts, o.router, o.experts, lang)
            if kind == "route":
                per_text = [routing.to_json(i) for i in range(len(texts))]
            elif kind == "score":
                loss, count = score(model, texts, routing, self.call_tokens, self.shapes_seen)
                per_text = [{"loss": None if np.isnan(v) else float(v), "masked_tokens": int(n), **routing.to_json(i)}
                            for i, (v, n) in enumerate(zip(loss, count))]
            else:
                vecs = embed(model, texts, routing, self.call_tokens, self.shapes_seen)
                per_text = [{"embedding": v.tolist(), **routing.to_json(i)} for i, v in enumerate(vecs)]
        names, counts = np.array(routing.names), (routing.weights > 0).sum(0)
        for name, n in zip(names, counts):
            if n:
                self.metrics.expert_texts.labels(name).inc(int(n))
        out, start = [], 0
        for j in jobs:
            out.append(per_text[start:start + len(j.texts)])
            start += len(j.texts)
        return out


# -------------------------------------------- XELM's maths over fixed batch shapes
def one_by_one(batch) -> bool:
    return sequential(batch, ONE_BY_ONE_ABOVE)


# ``XELM.score`` / ``embed`` / ``fill_mask`` compute the same (same masks, same mixture), batched by
# ``xelm.batches.length_bucketed``, whose shapes follow the mix of texts; here every compiled call
# has a shape of ``routing.scoring.shape_grid``, compiled once at warm-up.

def _each_batch(model: XELM, routing: Routing, seqs, masks, ratio, call_tokens, seen: tuple[str, set] | None):
    """(rows of the texts, batch, [B, E] weights of its rows, graphdef, stacked states) per
    compiled call: texts that need the same experts together, in fixed shapes (each added to
    ``seen``'s set as (its kind, experts, rows, length, mask slots))."""
    tok = model.tokenizer
    for names, rows, w in model.groups(routing):
        graphdef, states = model.pool.stacked(names)
        rows = np.asarray(rows)
        for b_rows, b in fixed_shape_batches([seqs[i] for i in rows], [masks[i] for i in rows],
                                             mask_id=tok.mask_token_id, pad_id=tok.pad_token_id,
                                             max_len=model.max_len, ratio=ratio, call_tokens=call_tokens):
            w_BxE = np.ones((len(b.input_ids_BxS), len(names)))
            w_BxE[:len(b_rows)] = w[b_rows]
            if seen is not None:
                seen[1].add((seen[0], len(names), *b.input_ids_BxS.shape, b.mask_labels_BxK.shape[1]))
            yield rows[b_rows], b, w_BxE, graphdef, states


def score(model: XELM, texts: list[str], routing: Routing, call_tokens: int = CALL_TOKENS, seen: set | None = None):
    """(per-text loss, masked tokens per text): ``XELM.score(texts, routing, return_counts=True)``."""
    seqs = encode(model.tokenizer, texts, model.max_len)
    special = np.array(model.tokenizer.all_special_ids)
    masks = [choose_masks(s, special, MASK_RATIO, 0) for s in seqs]
    total, count = np.zeros(len(texts)), np.array([len(m) for m in masks], np.int64)
    for rows, b, w_BxE, graphdef, states in _each_batch(model, routing, seqs, masks, MASK_RATIO, call_tokens,
                                                          ("score", seen) if seen is not None else None):
        logw_BxE = np.log(np.maximum(w_BxE, 1e-30)).astype(np.float32)
        nll_B = np.asarray(mixture_label_nll(graphdef, one_by_one(b), states, logw_BxE, b))
        total[rows] = nll_B[:len(rows)]
    return per_token(total, count), count


def embed(model: XELM, texts: list[str], routing: Routing, call_tokens: int = CALL_TOKENS,
          seen: set | None = None) -> np.ndarray:
    """``XELM.embed(texts, routing)``."""
    seqs = encode(model.tokenizer, texts, model.max_len)
    empty = [np.zeros(0, np.int32)] * len(seqs)
    out = None
    for rows, b, w_BxE, graphdef, states in _each_batch(model, routing, seqs, empty, None, call_tokens,
                                                          ("embed", seen) if seen is not None else None):
        w_BxE[len(rows):] = 0
        vec_BxD = np.asarray(mixture_embeddings(graphdef, one_by_one(b), states, w_BxE.astype(np.float32), b))
        if out is None:
            out = np.zeros((len(texts), vec_BxD.shape[1]), np.float32)
        out[rows] = vec_BxD[:len(rows)]
    return out


def fill_mask(model: XELM, texts: list[str], routing: Routing, top_k: int, call_tokens: int = CALL_TOKENS,
              seen: set | None = None) -> list:
    """Per text, ``XELM.fill_mask(text, top_k, routing of that text)``."""
    encoded = [encode_masked(model.tokenizer, t, model.max_len) for t in texts]
    seqs, wheres = [s for s, _ in encoded], [w for _, w in encoded]
    out: list = [None] * len(texts)
    for rows, b, w_BxE, graphdef, states in _each_batch(model, routing, seqs, wheres, None, call_tokens,
                                                          ("fill-mask", seen) if seen is not None else None):
        logp_BxKxV = np.asarray(mixture_vocab_logprobs(graphdef, one_by_one(b), states,
                                                       np.log(w_BxE).astype(np.float32), b))
        for r, i in enumerate(rows):
            out[i] = fillers(model.tokenizer, seqs[i], wheres[i], logp_BxKxV[r, :len(wheres[i])], top_k)
    return out
