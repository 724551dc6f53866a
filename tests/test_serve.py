"""``xelm serve`` over real HTTP on a free loopback port: every endpoint answers what
``routing.XELM`` answers, concurrent requests are batched without changing answers, an
expert added while requests flow is picked up without a failed request, mistakes are
one-line 4xx, a full queue is 503 with Retry-After, and SIGTERM drains (a real subprocess).

One in-process server (a uvicorn thread) is shared by the module; tests that change the
registry run last."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from experts.registry import Registry
from experts.training import add_language
from routing import XELM
from routing.ensemble import mixture_embeddings, mixture_label_nll
from routing.scoring import fixed_shape_batches, mask_slots, shape_grid
from xelm.app.serve import create_app, listen
from xelm.app.serve_engine import Engine

TEXTS = ["Alle Menschen sind frei und gleich an Würde und Rechten geboren.",
         "Tous les êtres humains naissent libres et égaux en dignité et en droits.",
         "Todos los seres humanos nacen libres e iguales en dignidad y derechos.",
         "All human beings are born free and equal in dignity and rights.",
         "Alle mensen worden vrij en gelijk in waardigheid en rechten geboren.",
         "Tutti gli esseri umani nascono liberi ed eguali in dignità e diritti."]
PORTUGUESE = "Todos os seres humanos nascem livres e iguais em dignidade e em direitos."
MAX_QUEUE, MAX_TEXTS, MAX_BATCH_TOKENS = 12, 32, 1024
MAX_BODY = 64 * 1024
CALL_TOKENS = 512  # padded tokens per compiled call: a smaller grid than a server's 2,048 warms up sooner
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tiny_expert_run, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("serve") / "run"
    shutil.copytree(tiny_expert_run, run)
    return run


@pytest.fixture(scope="module")
def reference(run) -> XELM:
    return XELM.from_run(run)


@pytest.fixture(scope="module")
def server(run):
    engine = Engine(run, max_batch_tokens=MAX_BATCH_TOKENS, max_queue=MAX_QUEUE, max_wait_s=0.005,
                    watch_interval_s=0.2, call_tokens=CALL_TOKENS)
    sock = listen("127.0.0.1", 0)
    srv = uvicorn.Server(uvicorn.Config(create_app(engine, MAX_TEXTS, MAX_BODY), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    client = httpx.Client(base_url=url, timeout=120)
    _wait_ready(client)
    yield SimpleNamespace(url=url, engine=engine, client=client)
    client.close()
    srv.should_exit = True
    thread.join(60)


def _wait_ready(client: httpx.Client, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.get("/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not get ready")


def _metrics(client: httpx.Client) -> dict[str, float]:
    """Every sample of /metrics, keyed 'name{label=value,...}'."""
    out = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def _post_many(url: str, path: str, bodies: list[dict]) -> list[httpx.Response]:
    """All bodies at once, one client thread each (released together)."""
    out: list = [None] * len(bodies)
    gate = threading.Barrier(len(bodies))

    def send(i):
        with httpx.Client(base_url=url, timeout=120) as c:
            gate.wait()
            out[i] = c.post(path, json=bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


# --------------------------------------------------------------------------- endpoints
def test_health_ready_docs_and_experts(server, reference):
    c = server.client
    assert c.get("/health").json() == {"status": "ok"}
    ready = c.get("/ready").json()
    assert ready["ready"] is True and ready["experts"] == len(reference.names)
    assert "swagger" in c.get("/docs").text.lower()
    paths = c.get("/openapi.json").json()["paths"]
    assert {"/route", "/score", "/fill-mask", "/embed", "/experts", "/health", "/ready", "/metrics"} <= set(paths)
    experts = c.get("/experts").json()
    assert [e["name"] for e in experts["experts"]] == reference.names
    assert [e["languages"] for e in experts["experts"]] == [card["languages"] for card in reference.cards]
    assert experts["fingerprint"] == ready["fingerprint"]


def _same_routing(got: dict, want: dict) -> None:
    assert [e["name"] for e in got["experts"]] == [e["name"] for e in want["experts"]]
    assert np.allclose([e["weight"] for e in got["experts"]], [e["weight"] for e in want["experts"]], atol=1e-6)
    assert {k: v for k, v in got.items() if k != "experts"} == {k: v for k, v in want.items() if k != "experts"}


@pytest.mark.parametrize("body", [{"router": "tfidf"}, {"router": "tfidf", "experts": 1}, {"lang": "deu"},
                                  {"router": "posterior", "experts": 1}, {"router": "tfidf", "temperature": 2.0}])
def test_route_equals_xelm(server, run, reference, body):
    got = server.client.post("/route", json={"text": TEXTS, **body})
    assert got.status_code == 200, got.text
    model = XELM.from_run(run, temperature=body["temperature"]) if "temperature" in body else reference
    want = model.route(TEXTS, body.get("router"), body.get("experts"), body.get("lang"))
    assert len(got.json()["results"]) == len(TEXTS)
    for i, r in enumerate(got.json()["results"]):
        _same_routing(r, want.to_json(i))


def test_score_embed_and_fill_mask_equal_xelm(server, reference):
    c = server.client
    score = c.post("/score", json={"text": TEXTS, "experts": 1}).json()["results"]
    assert np.allclose([r["loss"] for r in score], reference.score(TEXTS, top_k=1), atol=1e-5)
    assert all(r["masked_tokens"] > 0 and r["experts"] for r in score)

    single = c.post("/embed", json={"text": TEXTS[0], "lang": "deu"}).json()
    assert single["dim"] == len(single["results"][0]["embedding"]) and len(single["results"]) == 1
    embed = c.post("/embed", json={"text": TEXTS}).json()["results"]
    assert np.allclose([r["embedding"] for r in embed], reference.embed(TEXTS), atol=1e-5)

    text = "All human beings are born <mask> and equal in dignity."
    one = c.post("/fill-mask", json={"text": text, "top_k": 3}).json()
    want = reference.fill_mask(text, top_k=3)
    assert [x["token"] for x in one] == [x["token"] for x in want]
    assert np.allclose([x["score"] for x in one], [x["score"] for x in want], atol=1e-6)
    assert one[0]["sequence"] == want[0]["sequence"] and one[0]["token_str"] == want[0]["token_str"]
    two = c.post("/fill-mask", json={"text": [text, "Tous les <mask> naissent <mask>."], "experts": 1}).json()
    want_two = reference.fill_mask("Tous les <mask> naissent <mask>.", experts_top_k=1)
    assert len(two) == 2 and len(two[0]) == 5 and len(two[1]) == 2
    assert [[x["token"] for x in m] for m in two[1]] == [[x["token"] for x in m] for m in want_two]


def test_concurrent_requests_are_batched_with_the_answers_they_get_alone(server):
    texts = (TEXTS * 2)[:8]
    alone = [server.client.post("/score", json={"text": t}).json()["results"][0] for t in texts]
    before = _metrics(server.client)
    answers = _post_many(server.url, "/score", [{"text": t} for t in texts])
    after = _metrics(server.client)
    assert [r.status_code for r in answers] == [200] * len(texts)
    for a, b in zip(answers, alone):
        got = a.json()["results"][0]
        routing = ("experts", "router")  # equal to float rounding: a batch's products round in their own order
        _same_routing({k: got[k] for k in routing}, {k: b[k] for k in routing})
        assert got["masked_tokens"] == b["masked_tokens"] and abs(got["loss"] - b["loss"]) < 1e-5
    batches = after["xelm_batch_requests_count{}"] - before["xelm_batch_requests_count{}"]
    requests = after["xelm_batch_requests_sum{}"] - before["xelm_batch_requests_sum{}"]
    assert requests == len(texts) and batches < len(texts)  # some batch held several requests
    served = after['xelm_requests_total{endpoint=/score,status=200}'] - before['xelm_requests_total{endpoint=/score,status=200}']
    assert served == len(texts)
    traffic = sum(v for k, v in after.items() if k.startswith("xelm_expert_texts_total"))
    assert traffic >= len(texts)
    assert after["xelm_request_latency_seconds_count{endpoint=/score}"] >= len(texts)


def test_fixed_shape_batches_cover_every_text_once_in_grid_shapes():
    rng = np.random.default_rng(0)
    seqs = [np.arange(n, dtype=np.int32) + 10 for n in rng.integers(3, 257, 90)]
    masks = [np.sort(rng.choice(np.arange(1, len(q) - 1), max(1, round(0.15 * (len(q) - 2))), replace=False))
             .astype(np.int32) for q in seqs]
    grid, seen = set(shape_grid(256)), []
    for rows, b in fixed_shape_batches(seqs, masks, mask_id=4, pad_id=0, max_len=256):
        shape = b.input_ids_BxS.shape
        assert shape in grid and b.mask_labels_BxK.shape[1] == mask_slots(shape[1])
        assert len(rows) * 4 >= 3 * shape[0]  # at most a quarter of the rows are padding
        for r, i in enumerate(rows):
            assert shape[1] == min(256, max(16, 1 << (len(seqs[i]) - 1).bit_length()))  # its own bucket
            assert (b.mask_labels_BxK[r, :len(masks[i])] == seqs[i][masks[i]]).all()
            assert b.mask_weights_BxK[r].sum() == len(masks[i])
        seen += list(rows)
    assert sorted(seen) == list(range(len(seqs)))


def test_requests_after_warm_up_compile_nothing(server):
    """Warm-up compiled every batch shape of the default routing: traffic of any mix of lengths
    and batch sizes runs on compiled calls only (a compile on the request path costs seconds)."""
    before = mixture_label_nll._cache_size(), mixture_embeddings._cache_size()
    words = " ".join(TEXTS).split()
    bodies = [{"text": " ".join(words[:n])} for n in (1, 3, 9, 30, 60, 5, 2, 17, 40, 12, 7, 25)]
    for path in ("/score", "/embed"):
        assert [r.status_code for r in _post_many(server.url, path, bodies)] == [200] * len(bodies)
        assert server.client.post(path, json={"text": [b["text"] for b in bodies]}).status_code == 200
    assert (mixture_label_nll._cache_size(), mixture_embeddings._cache_size()) == before


# ----------------------------------------------------------------------- bad requests
@pytest.mark.parametrize("path,body,status,match", [
    ("/route", b'{"text": "unclosed', 400, "malformed JSON"),
    ("/route", {"text": ""}, 422, "empty"),
    ("/route", {"text": []}, 422, "no text"),
    ("/route", {}, 422, "text is required"),
    ("/route", {"text": "hi", "router": "magic"}, 422, "unknown router 'magic'"),
    ("/route", {"text": "hi", "experts": 9}, 422, "experts 9 is out of range"),
    ("/route", {"text": "hi", "experts": "2"}, 422, "experts"),
    ("/route", {"text": "hi", "top_k": 1}, 422, "keep the K best experts with experts"),
    ("/fill-mask", {"text": "a <mask>", "top_k": 0}, 422, "top_k 0 is out of range"),
    ("/route", {"text": "hi", "colour": 1}, 422, "unknown field 'colour'"),
    ("/route", {"text": "hi", "lang": "xx"}, 422, "language code"),
    ("/route", {"text": "hi", "router": "posterior", "lang": "deu"}, 422, "use router language"),
    ("/route", {"text": ["a", "b"], "lang": ["deu"]}, 422, "1 languages given for 2 texts"),
    ("/score", {"text": "hi", "temperature": 0}, 422, "temperature"),
    ("/fill-mask", {"text": "no mask here"}, 422, "<mask>"),
    ("/embed", {"text": ["x"] * (MAX_TEXTS + 1)}, 413, f"more than {MAX_TEXTS}"),
    ("/embed", {"text": [TEXTS[1] * 4] * MAX_TEXTS}, 413, "batch budget"),
    ("/nowhere", {"text": "hi"}, 404, "Not Found"),
    ("/route", {"text": "x" * MAX_BODY}, 413, f"larger than the server reads ({MAX_BODY:,} bytes)"),
])
def test_bad_requests_are_one_line_4xx(server, path, body, status, match):
    r = (server.client.post(path, content=body, headers={"content-type": "application/json"})
         if isinstance(body, bytes) else server.client.post(path, json=body))
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert match in error and "\n" not in error


def test_a_body_streamed_past_the_limit_is_413_and_the_server_stays_up(server):
    """No Content-Length (chunked): the limit holds while the body arrives, not after."""
    chunks = (b'{"text": "' + b"x" * 4096 for _ in range(2 * MAX_BODY // 4096))
    r = server.client.post("/route", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than the server reads" in r.json()["error"]
    assert server.client.post("/route", json={"text": TEXTS[0]}).status_code == 200


@pytest.mark.parametrize("flag, value", [("--max-wait-ms", "inf"), ("--watch-interval", "nan"),
                                         ("--watch-interval", "0"), ("--max-body-kb", "0")])
def test_serve_flags_that_would_hang_or_spin_are_refused_before_anything_starts(run, capsys, flag, value):
    from xelm.app.cli import main

    assert main(["serve", "--run-dir", str(run), flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"xelm: error: {flag} ") and "\n" not in err


def test_a_full_queue_is_503_with_retry_after_and_the_rest_are_answered(server):
    gate = threading.Event()
    server.engine.executor.submit(gate.wait, 60)  # the engine is busy: requests queue up behind it
    busy_key = "xelm_requests_total{endpoint=/route,status=503}"
    rejected_before = _metrics(server.client).get(busy_key, 0)
    first: list = []
    head = threading.Thread(target=lambda: first.append(httpx.post(f"{server.url}/route", json={"text": TEXTS[0]},
                                                                   timeout=120)))
    head.start()  # the batcher takes it, then waits for the engine: nothing more leaves the queue
    deadline = time.monotonic() + 30
    while _metrics(server.client)["xelm_requests_in_flight{}"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)

    def release_once_one_is_rejected():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _metrics(server.client).get(busy_key, 0) == rejected_before:
            time.sleep(0.05)
        gate.set()

    threading.Thread(target=release_once_one_is_rejected, daemon=True).start()
    out = _post_many(server.url, "/route", [{"text": TEXTS[i % len(TEXTS)]} for i in range(MAX_QUEUE + 4)])
    gate.set()
    head.join(60)
    codes = [r.status_code for r in out]
    assert first[0].status_code == 200 and set(codes) == {200, 503} and codes.count(200) >= MAX_QUEUE, codes
    busy = next(r for r in out if r.status_code == 503)
    assert busy.headers["Retry-After"] == "1" and "queue is full" in busy.json()["error"]
    assert server.client.get("/health").status_code == 200
    assert server.client.post("/route", json={"text": TEXTS[0]}).status_code == 200


def test_requests_waiting_to_be_counted_take_places_in_the_queue(server):
    # Token counting is stuck: the first MAX_QUEUE requests wait for it, the rest are 503 at once
    # (before, every request waited for the counter, without bound, before the queue was checked).
    gate = threading.Event()
    server.engine.counter.submit(gate.wait, 60)
    out: list = []

    def post(i):
        out.append(httpx.post(f"{server.url}/route", json={"text": TEXTS[i % len(TEXTS)]}, timeout=120))

    threads = [threading.Thread(target=post, args=(i,)) for i in range(MAX_QUEUE + 4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(out) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    while_stuck = [r.status_code for r in out]
    gate.set()
    for t in threads:
        t.join(60)
    assert while_stuck == [503] * 4, while_stuck
    codes = sorted(r.status_code for r in out)
    assert codes == [200] * MAX_QUEUE + [503] * 4, codes


# ---------------------------------------------------------------- SIGTERM (subprocess)
def test_sigterm_drains_in_flight_requests_then_exits(tiny_expert_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_expert_run, run)
    proc = subprocess.Popen([sys.executable, "-m", "xelm", "serve", "--run-dir", str(run), "--port", "0",
                             "--max-wait-ms", "3000", "--no-warm-up"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line + proc.stdout.read()
        url = line.split("listening on ")[1].split()[0]
        client = httpx.Client(base_url=url, timeout=120)
        _wait_ready(client)
        done: list[tuple[int, float]] = []
        body = {"text": TEXTS}  # cheap; in flight for 3 s because an idle engine waits that long for company

        def send():
            with httpx.Client(base_url=url, timeout=120) as c:
                r = c.post("/route", json=body)
                done.append((r.status_code, time.monotonic()))

        threads = [threading.Thread(target=send) for _ in range(4)]

        def wait_in_flight(n: int) -> None:  # n requests besides this metrics one
            deadline = time.monotonic() + 30
            while _metrics(client)["xelm_requests_in_flight{}"] < 1 + n and time.monotonic() < deadline:
                time.sleep(0.01)

        # The first request alone finds the engine idle, which then waits 3 s for company: the
        # others arrive inside that wait, so all four are in flight at SIGTERM however fast the
        # machine is (sent together, they could fill a batch at once and finish before it).
        threads[0].start()
        wait_in_flight(1)
        for t in threads[1:]:
            t.start()
        wait_in_flight(len(threads))
        client.close()
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        for t in threads:
            t.join(120)
        assert proc.wait(120) == 0
        rest = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [code for code, _ in done] == [200] * len(threads)
    assert any(when > signalled for _, when in done), "every request had finished before SIGTERM"
    assert "stopped after draining" in rest
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=5)


# ------------------------------------------------------ registry changes (run last)
def test_an_expert_added_and_removed_while_serving_without_a_failed_request(server, run):
    c = server.client
    before = c.get("/experts").json()
    statuses: list[int] = []
    stop = threading.Event()

    def traffic():
        with httpx.Client(base_url=server.url, timeout=120) as tc:
            for i in range(2000):
                if stop.is_set():
                    break
                body = {"text": [TEXTS[i % len(TEXTS)], PORTUGUESE]}
                statuses.append(tc.post("/route" if i % 2 else "/score", json=body).status_code)
                time.sleep(0.05)  # steady traffic, not a core of its own

    flow = threading.Thread(target=traffic)
    flow.start()
    try:
        card = add_language(run, ["por"], tokens=512, progress=False)
        name = card["name"]
        now = _poll_experts(c, lambda names: name in names)
        assert now["fingerprint"] != before["fingerprint"]
        r = c.post("/route", json={"text": PORTUGUESE, "lang": "por"})
        assert r.json()["results"][0]["experts"] == [{"name": name, "weight": 1.0}]
        assert r.headers["X-Xelm-Registry"] == now["fingerprint"]
        tfidf = c.post("/route", json={"text": PORTUGUESE, "router": "tfidf"}).json()["results"][0]
        _same_routing(tfidf, XELM.from_run(run).route(PORTUGUESE, "tfidf").to_json(0))
        assert name in [e["name"] for e in tfidf["experts"]]
        assert c.post("/score", json={"text": PORTUGUESE, "lang": "por"}).status_code == 200

        Registry(run / "registry").remove(name)
        _poll_experts(c, lambda names: name not in names)
        gone = c.post("/route", json={"text": PORTUGUESE, "lang": "por"}).json()["results"][0]
        assert name not in [e["name"] for e in gone["experts"]] and "fallback" in gone
    finally:
        stop.set()
        flow.join(120)
    assert len(statuses) >= 10 and set(statuses) == {200}, statuses  # requests all through both reloads
    assert _metrics(c)["xelm_registry_reloads_total{}"] >= 2


def test_a_damaged_registry_keeps_the_old_experts_and_is_retried_ever_less_often(server, run):
    index = run / "registry" / "index.json"
    good, tries = index.read_bytes(), []
    build = server.engine._build_if_changed

    def counted():
        tries.append(time.monotonic())
        return build()

    server.engine._build_if_changed = counted
    try:
        index.write_text('{"format": 1, "experts": ')  # cut short
        time.sleep(4)
        assert server.client.post("/route", json={"text": TEXTS[0]}).status_code == 200  # the old experts serve
    finally:
        index.write_bytes(good)
        server.engine._build_if_changed = build
    gaps = np.diff(tries)
    # Every 0.2 s without backing off (about 20 tries in 4 s); the gaps double instead.
    assert 2 <= len(tries) <= 6 and all(b > a for a, b in zip(gaps, gaps[1:])), gaps


def _poll_experts(client: httpx.Client, ok, timeout: float = 240) -> dict:
    """Wait for the watcher's reload (a generous bound: a busy CI machine compiles slowly)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        experts = client.get("/experts").json()
        if ok([e["name"] for e in experts["experts"]]):
            return experts
        time.sleep(0.1)
    raise AssertionError(f"the registry change did not show in /experts: {experts}")
