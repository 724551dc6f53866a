"""``xelm serve``: the routers and the ensemble over HTTP (FastAPI on uvicorn).

FastAPI because its typed request models give validation and the OpenAPI page (``/docs``)
from one declaration; uvicorn because it drains in-flight requests on SIGTERM. The work is
done by :class:`~xelm.app.serve_engine.Engine` (dynamic batching, registry watching); this
module checks requests, turns mistakes into one-line 4xx answers and overload into 503.
"""

from __future__ import annotations

import asyncio
import math
import signal
import socket
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.exceptions import HTTPException

from routing import ROUTERS
from routing.api import mask_context
from routing.masking import check_texts
from xelm.app.serve_engine import Engine, Job, Options, Overloaded, api_message
from xelm.errors import XelmError
from xelm.languages import to_iso3

RETRY_AFTER_S = 1
MAX_TEXTS = 256
MAX_BODY_BYTES = 1 << 20  # a request body of more is refused (413) before it is parsed
ENDPOINTS = ("/route", "/score", "/fill-mask", "/embed", "/experts", "/health", "/ready", "/metrics")
ROUTER_HELP = ("language (needs lang) | tfidf | posterior | langid; default: language when lang is given, "
               "else tfidf")


class ApiError(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


class Query(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str | list[str] = Field(description="one text, or a list of texts")
    router: str | None = Field(None, description=ROUTER_HELP)
    experts: StrictInt | None = Field(None, description="keep the K best experts per text (renormalised)")
    lang: str | list[str] | None = Field(None, description="the texts' language (ISO 639-3 or 639-1), or one "
                                                           "per text: the language router's input")
    temperature: float | None = Field(None, gt=0, le=1000, description="TF-IDF router temperature T in "
                                                                       "softmax(-d²/T) (default: the server's)")


class FillMaskQuery(Query):
    text: str | list[str] = Field(description="text(s) with one or more <mask>")
    top_k: StrictInt = Field(5, description="tokens to list per <mask> (as in transformers)")


class Observe:
    """Count and time every request; read POST bodies as JSON whatever their content type says
    (`curl -d` sends a form type), and refuse one of more than ``max_body`` bytes while it
    arrives (JSON is parsed on the event loop). Plain ASGI: Starlette's BaseHTTPMiddleware costs
    more per request."""

    def __init__(self, app, metrics, on_answer, max_body: int = MAX_BODY_BYTES):
        self.app, self.metrics, self.on_answer, self.max_body = app, metrics, on_answer, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status, t0 = 500, time.perf_counter()

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            if scope["method"] == "POST":
                scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-type"] + [
                    (b"content-type", b"application/json")]
                replay = await self._read_body(receive)
                if replay is None:
                    too_large = f"the request body is larger than the server reads ({self.max_body:,} bytes): split it"
                    return await _error(413, too_large)(scope, receive, send_status)
                receive = replay
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
            self.on_answer()

    async def _read_body(self, receive):
        """The whole body, read as it arrives and replayed to the app; None as soon as it passes
        ``max_body`` bytes (a Content-Length is not needed to say so)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: the app sees that
                break
            size += len(message.get("body", b""))
            if size > self.max_body:
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                break
        pending = [message]

        async def replay():
            return pending.pop() if pending else await receive()
        return replay


def _error(status: int, message: str, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": message}, status, headers=headers)


def _validation_message(e: RequestValidationError) -> tuple[int, str]:
    first = e.errors()[0]
    if first["type"] == "json_invalid":
        return 400, f"malformed JSON: {first.get('ctx', {}).get('error', first['msg'])}"
    where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
    if where == "body" and first["type"] != "missing":
        return 422, 'the body must be a JSON object such as {"text": "..."}'
    if first["type"] == "missing":
        return 422, f"{where} is required"
    if first["type"] == "extra_forbidden" and where == "top_k":
        return 422, "top_k is the tokens listed per <mask> (fill-mask only): keep the K best experts with experts"
    if first["type"] == "extra_forbidden":
        return 422, f"unknown field {where!r}"
    return 422, f"{where}: {first['msg']}"


def create_app(engine: Engine, max_texts: int = MAX_TEXTS, max_body: int = MAX_BODY_BYTES) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app):
        await engine.start()
        yield
        await engine.stop()

    app = FastAPI(title="xelm serve", lifespan=lifespan,
                  description="Route texts to cross-lingual experts and ensemble them: the answers of "
                              "`routing.XELM`, batched across concurrent requests.")
    app.state.engine, metrics = engine, engine.metrics
    app.state.answered = 0

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e):
        return _error(*_validation_message(e))

    @app.exception_handler(HTTPException)
    async def _http(request, e):
        return _error(e.status_code, str(e.detail))

    @app.exception_handler(ApiError)
    async def _api(request, e):
        return _error(e.status, e.message, e.retry_after)

    app.add_middleware(Observe, metrics=metrics, max_body=max_body,
                       on_answer=lambda: setattr(app.state, "answered", app.state.answered + 1))

    async def answer(kind: str, q: Query) -> tuple[list, str]:
        """Per text of ``q``, its answer; and the registry fingerprint that answered."""
        if not engine.ready:
            raise ApiError(503, engine.ready_error or "not ready: the experts are loading", RETRY_AFTER_S)
        try:
            texts = check_texts(q.text)
            if len(texts) > max_texts:
                raise ApiError(413, f"{len(texts)} texts in one request, more than {max_texts}: split it")
            router = q.router or ("language" if q.lang is not None else "tfidf")
            if router not in ROUTERS:
                raise ApiError(422, f"unknown router {router!r}: choose one of {', '.join(ROUTERS)}")
            if q.lang is not None and router in ("posterior", "langid"):
                raise ApiError(422, f"lang names the language itself: use router language with it, not {router}")
            n = len(engine.served.model.names)
            if q.experts is not None and not 1 <= q.experts <= n:
                raise ApiError(422, f"experts {q.experts} is out of range: give a whole number from 1 to {n} "
                                    "(the experts served)")
            if kind == "fill-mask":
                for t in texts:
                    mask_context(t)
                if not 1 <= q.top_k <= len(engine.tokenizer):
                    raise ApiError(422, f"top_k {q.top_k} is out of range: give 1 to {len(engine.tokenizer)}")
            langs = None
            if q.lang is not None:
                langs = [q.lang] * len(texts) if isinstance(q.lang, str) else list(q.lang)
                if len(langs) != len(texts):
                    raise ApiError(422, f"{len(langs)} languages given for {len(texts)} texts: give one per "
                                        "text, or one for all")
                langs = [to_iso3(code, "lang") for code in langs]
        except XelmError as e:
            raise ApiError(422, api_message(e)) from None
        try:
            with engine.admission():
                tokens = await asyncio.get_running_loop().run_in_executor(engine.counter, engine.count_tokens, texts)
                if tokens > engine.max_batch_tokens:
                    raise ApiError(413, f"the request has {tokens} tokens, more than the server's batch budget "
                                        f"({engine.max_batch_tokens}): split it")
                options = Options(router, getattr(q, "top_k", None), q.experts, q.temperature, langs is not None)
                job = Job(kind, options, texts, langs, tokens, asyncio.get_running_loop().create_future())
                future = engine.submit(job)
        except Overloaded as e:
            raise ApiError(503, f"busy: {e}; retry after {RETRY_AFTER_S} s", RETRY_AFTER_S) from None
        try:
            return await future
        except XelmError as e:
            raise ApiError(422, api_message(e)) from None
        except Exception as e:
            raise ApiError(500, f"internal error: {type(e).__name__}: {api_message(e)}") from None

    def reply(body, fp: str) -> JSONResponse:
        return JSONResponse(body, headers={"X-Xelm-Registry": fp})

    @app.post("/route", summary="experts and weights per text")
    async def route(q: Query):
        results, fp = await answer("route", q)
        return reply({"results": results}, fp)

    @app.post("/score", summary="masked-LM loss per text (nats per masked token) of the routed mixture")
    async def score(q: Query):
        results, fp = await answer("score", q)
        return reply({"results": results}, fp)

    @app.post("/fill-mask", summary="the likeliest tokens for each <mask>, in the transformers pipeline's format")
    async def fill_mask(q: FillMaskQuery):
        results, fp = await answer("fill-mask", q)
        return reply(results[0] if isinstance(q.text, str) else results, fp)

    @app.post("/embed", summary="the routed experts' weighted mean embedding per text")
    async def embed(q: Query):
        results, fp = await answer("embed", q)
        return reply({"dim": len(results[0]["embedding"]), "results": results}, fp)

    @app.get("/experts", summary="the registry as served")
    async def experts():
        served = engine.served
        keys = ("name", "kind", "languages", "parent", "tokens_trained", "validation_loss", "cluster_method",
                "created", "checksum")
        cards = [{k: c.get(k) for k in keys} for c in served.model.registry_cards]
        return {"registry": str(served.model.registry.root), "fingerprint": served.fingerprint, "experts": cards}

    @app.get("/health", summary="the process is alive")
    async def health():
        return {"status": "ok"}

    @app.get("/ready", summary="the experts are loaded and requests are answered")
    async def ready():
        if not engine.ready:
            raise ApiError(503, engine.ready_error or "not ready: the experts are loading", RETRY_AFTER_S)
        return {"ready": True, "experts": len(engine.served.model.names), "fingerprint": engine.served.fingerprint}

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=metrics.content_type)

    return app


def listen(host: str, port: int) -> socket.socket:
    if not 0 <= port <= 65535:
        raise XelmError(f"--port {port} is out of range: give 0 (any free port) to 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        sock = socket.socket(infos[0][0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(infos[0][4])
    except OSError as e:
        raise XelmError(f"cannot listen on {host}:{port} ({e.strerror or e}): choose another --host or --port") \
            from None
    return sock


def cmd_serve(args) -> int:
    import uvicorn

    for flag in ("max_batch_tokens", "max_queue", "max_texts", "max_body_kb"):
        if getattr(args, flag) < 1:
            raise XelmError(f"--{flag.replace('_', '-')} {getattr(args, flag)} must be at least 1")
    for flag, low in (("max_wait_ms", 0.0), ("watch_interval", 0.01), ("drain_timeout", 0.0)):
        value = getattr(args, flag)
        if not (math.isfinite(value) and value >= low):  # inf waits forever, nan never watches
            raise XelmError(f"--{flag.replace('_', '-')} {value} must be a finite number of at least {low:g}")
    engine = Engine(args.run_dir, args.registry, max_batch_tokens=args.max_batch_tokens, max_queue=args.max_queue,
                    max_wait_s=args.max_wait_ms / 1000, watch_interval_s=args.watch_interval,
                    temperature=args.temperature, prior=args.prior, warm_up=not args.no_warm_up)
    app = create_app(engine, args.max_texts, args.max_body_kb * 1024)
    sock = listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{host}:{port}"
    print(f"xelm serve: listening on {url} ({len(engine.served.model.names)} experts from "
          f"{engine.served.model.registry.root}); API docs at {url}/docs; {url}/ready answers 200 once "
          "the experts are loaded", flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=args.drain_timeout)
    # uvicorn drains on SIGTERM, then re-raises it to the handler that was there before: a no-op
    # here, so a drained server exits 0 instead of dying of the signal.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"xelm serve: stopped after draining; {app.state.answered} requests answered", flush=True)
    return 0

