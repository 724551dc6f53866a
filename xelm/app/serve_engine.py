"""The engine behind ``xelm serve``: one thread runs ``routing.XELM``, fed by dynamic batches.

Requests that arrive together (while the engine is busy, or within a short wait when it is
idle) form one batch, up to a token budget; the batch's jobs with the same options become one
``XELM`` call, which groups its texts by the experts they need. Every answer depends on its
own text only (masks are seeded by the text), so batching does not change it.

A watcher hashes the registry's index; when the experts' fingerprint changes it builds and
warms a new ``XELM`` (routers refit, experts loaded) off the request path and swaps it in
between batches: requests in flight finish on the old one, later ones see the new experts.
One ``XELM`` (and one HF fast tokenizer, which threads must not share) per thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
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
from routing.runfiles import fingerprint
from xelm.app.serve_metrics import Metrics
from xelm.errors import XelmError
from xelm.rundir import RunDir

log = logging.getLogger("xelm.serve")
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
                 temperature: float = 0.1, prior: str = "uniform", metrics: Metrics | None = None):
        self.run_dir, self.registry_arg = Path(run_dir), registry
        self.max_batch_tokens, self.max_queue, self.max_wait_s = max_batch_tokens, max_queue, max_wait_s
        self.watch_interval_s, self.temperature, self.prior = watch_interval_s, temperature, prior
        self.metrics = metrics or Metrics()
        self.index_path = run_registry(self.run_dir, registry).index_path
        self.served = self._build()  # here, not later: a bad run or an empty registry fails before listening
        self.tokenizer = RunDir(self.run_dir).tokenizer()  # the event loop's own, for counting tokens
        self.ready, self.ready_error, self.closing = False, None, False
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="xelm-engine")
        self.queue: asyncio.Queue | None = None
        self._carry: Job | None = None
        self._tasks: list[asyncio.Task] = []
        self._seen_digest = self.served.index_digest
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
    def _warm(model: XELM) -> None:
        """Fit the default router and load every expert, so the first requests do not pay."""
        model.route([WARM_TEXT], "tfidf")
        for name in model.names:
            model.pool.get(name)
        model.score([WARM_TEXT])

    def _build_if_changed(self) -> Served | None:
        served = self._build()
        if served.fingerprint == self.served.fingerprint:
            return None
        self._warm(served.model)
        return served

    def _swap(self, served: Served, how: str) -> None:
        old = self.served
        self.served = served
        self.metrics.reloads.inc()
        self.metrics.experts.set(len(served.model.names))
        log.warning("registry changed (%s): %d -> %d experts (%s)", how, len(old.model.names),
                    len(served.model.names), ", ".join(served.model.names))

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.watch_interval_s)
            try:
                digest = await loop.run_in_executor(None, self._index_digest)
                if digest == self._seen_digest:
                    continue
                served = await loop.run_in_executor(None, self._build_if_changed)
                self._seen_digest = digest
                if served is not None:
                    self._swap(served, "watcher")
            except Exception as e:  # a registry mid-change or damaged: keep serving the old one, retry
                log.warning("registry not reloaded (will retry): %s", api_message(e))

    def _model_for(self, served: Served, temperature: float | None) -> XELM:
        """The XELM for a TF-IDF temperature (it is a constructor option): one per temperature,
        all sharing the generation's loaded experts."""
        if temperature is None or temperature == self.temperature:
            return served.model
        if temperature not in served.variants:
            m = served.model
            variant = XELM(m.run_dir, m.registry, m.tokenizer, temperature=temperature, prior=self.prior)
            variant.pool = m.pool
            served.variants[temperature] = variant
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

    def depth(self) -> int:
        return (self.queue.qsize() if self.queue else 0) + (self._carry is not None)

    def count_tokens(self, texts: list[str]) -> int:
        ids = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
        return sum(min(len(seq), self.served.model.max_len) for seq in ids)

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
            per_text = [model.fill_mask(t, o.top_k, _row(routing, i)) for i, t in enumerate(texts)]
        else:
            routing = model.route(texts, o.router, o.experts, lang)
            if kind == "route":
                per_text = [routing.to_json(i) for i in range(len(texts))]
            elif kind == "score":
                loss, count = model.score(texts, routing, return_counts=True)
                per_text = [{"loss": None if np.isnan(v) else float(v), "masked_tokens": int(n), **routing.to_json(i)}
                            for i, (v, n) in enumerate(zip(loss, count))]
            else:
                vecs = model.embed(texts, routing)
                per_text = [{"embedding": v.tolist(), **routing.to_json(i)} for i, v in enumerate(vecs)]
        for i in range(len(texts)):
            for e in routing.experts(i):
                self.metrics.expert_texts.labels(e["name"]).inc()
        out, start = [], 0
        for j in jobs:
            out.append(per_text[start:start + len(j.texts)])
            start += len(j.texts)
        return out


def _row(routing: Routing, i: int) -> Routing:
    return Routing(routing.names, routing.weights[i:i + 1], routing.router, routing.notes[i:i + 1])
