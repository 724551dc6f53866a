"""Load generator for ``xelm serve``: 1, 8 and 32 concurrent clients sending single texts.

Starts ``xelm serve --port 0`` on 127.0.0.1 (a real subprocess), waits for /ready (the server
compiles its batch shapes before it says ready: the time is printed), sends an untimed warm-up
pass of a few texts at every concurrency, then for each concurrency sends the same texts
(bounded in count and time; each client on one kept-alive connection) and prints texts/s, p50
and p99 latency, the mean batch, the 1-minute load average around it (the machine may be
shared: compare ratios measured in one run), and the ratio of the top concurrency's throughput
to the same texts sent one at a time (concurrency 1)::

    python benchmarks/serve_throughput.py --run-dir runs/demo [--endpoint score] [--requests 256]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only
LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy


def get(url: str) -> str | None:
    """The body of a GET answered 200; None when the server is not up or not ready (503)."""
    try:
        with LOOPBACK.open(url, timeout=5) as r:
            return r.read().decode()
    except OSError:  # refused, HTTPError (503 before /ready), timeouts
        return None


def texts_for(run_dir: Path, n: int) -> list[str]:
    """``n`` single test-split sentences in the languages of the run's experts."""
    from experts.registry import run_registry
    from xelm.data import load_corpus

    langs = sorted({lang for card in run_registry(run_dir).cards() for lang in card["languages"]})
    test = load_corpus("udhr", languages=langs)["test"]
    lines = [line.strip() for text in test["text"][:] for line in text.split("\n") if 20 <= len(line.strip()) <= 300]
    rng = np.random.default_rng(0)
    return [lines[i] for i in rng.choice(len(lines), size=min(n, len(lines)), replace=False)]


def start_server(run_dir: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "xelm", "serve", "--run-dir", str(run_dir), "--host", HOST,
                             "--port", "0", *extra], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")})
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"the server did not start: {line}")
    url = line.split("listening on ")[1].split()[0]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if get(f"{url}/ready") is not None:
            return proc, url
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not get ready in 600 s")


async def _post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str,
                body: bytes) -> int:
    """One HTTP/1.1 POST on a kept-alive connection; the status code (the body is read and dropped)."""
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    await reader.readexactly(length)
    return int(lines[0].split()[1])


async def load(url: str, endpoint: str, texts: list[str], clients: int, seconds: float) -> dict:
    """``clients`` workers, one kept-alive connection each, send one text per request until the
    texts or the time run out. A bare asyncio client: with httpx's pool, the load generator (sharing
    the server's cores) was what limited throughput at 32 clients (benchmarks/README.md, serving)."""
    host, port = url.removeprefix("http://").split(":")
    latencies, failures, next_text = [], 0, 0
    deadline = time.perf_counter() + seconds

    async def worker():
        nonlocal next_text, failures
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while next_text < len(texts) and time.perf_counter() < deadline:
                body = json.dumps({"text": texts[next_text]}).encode()
                next_text += 1
                t0 = time.perf_counter()
                if await asyncio.wait_for(_post(reader, writer, f"{host}:{port}", endpoint, body), 120) == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    failures += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - t0
    lat = np.array(latencies)
    return {"clients": clients, "texts": len(lat), "failed": failures, "seconds": round(wall, 3),
            "texts_per_s": round(len(lat) / wall, 2), "p50_ms": round(1000 * float(np.percentile(lat, 50)), 1),
            "p99_ms": round(1000 * float(np.percentile(lat, 99)), 1)}


def batch_sizes(url: str) -> tuple[float, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = get(f"{url}/metrics")
    if text is None:
        raise SystemExit(f"the server did not answer {url}/metrics")
    samples = {s.name: s.value for f in text_string_to_metric_families(text)
               for s in f.samples if s.name.startswith("xelm_batch_texts")}
    return samples.get("xelm_batch_texts_sum", 0.0), samples.get("xelm_batch_texts_count", 0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--endpoint", default="score", choices=["route", "score", "embed", "fill-mask"])
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts (default 1,8,32)")
    p.add_argument("--requests", type=int, default=256, help="texts per concurrency (default 256)")
    p.add_argument("--seconds", type=float, default=60, help="time limit per concurrency (default 60)")
    p.add_argument("--warm-requests", type=int, default=64, help="untimed texts per concurrency first (default 64)")
    p.add_argument("--json", action="store_true")
    p.add_argument("server_args", nargs="*", help="extra `xelm serve` arguments, after --")
    args = p.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    texts = texts_for(args.run_dir, args.requests)
    if args.endpoint == "fill-mask":
        texts = [" ".join(t.split()[:3] + ["<mask>"] + t.split()[4:]) for t in texts if len(t.split()) > 4]
    t0 = time.monotonic()
    proc, url = start_server(args.run_dir, args.server_args)
    ready_s = round(time.monotonic() - t0, 1)
    if not args.json:
        print(f"server ready in {ready_s} s (start, load, compile)", flush=True)
    rows = []
    try:
        for clients in levels:  # untimed: first requests of each kind (routers' caches, connections)
            asyncio.run(load(url, f"/{args.endpoint}", texts[:args.warm_requests], clients, args.seconds))
        for clients in levels:
            s0, n0 = batch_sizes(url)
            load_before = os.getloadavg()[0]
            row = asyncio.run(load(url, f"/{args.endpoint}", texts, clients, args.seconds))
            s1, n1 = batch_sizes(url)
            row["mean_batch_texts"] = round((s1 - s0) / max(n1 - n0, 1), 2)
            row["load_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            rows.append(row)
            if not args.json:
                print(f"{clients:>3} clients: {row['texts_per_s']:>8.1f} texts/s   p50 {row['p50_ms']:>7.1f} ms   "
                      f"p99 {row['p99_ms']:>7.1f} ms   mean batch {row['mean_batch_texts']:>5.1f} texts   "
                      f"({row['texts']} texts, {row['failed']} failed, {row['seconds']} s; load "
                      f"{row['load_1min'][0]:.1f} -> {row['load_1min'][1]:.1f})", flush=True)
    finally:
        proc.terminate()
        proc.wait(60)
    one = next((r for r in rows if r["clients"] == 1), None)
    ratio = round(rows[-1]["texts_per_s"] / one["texts_per_s"], 2) if one else None
    summary = {"endpoint": args.endpoint, "run_dir": str(args.run_dir), "cpus": os.cpu_count(), "ready_s": ready_s,
               "levels": rows,
               f"throughput_ratio_{rows[-1]['clients']}_vs_1": ratio}
    if args.json:
        print(json.dumps(summary, indent=2))
    elif ratio is not None:
        print(f"{rows[-1]['clients']} clients vs one at a time: {ratio:.2f}x the throughput")


if __name__ == "__main__":
    main()
