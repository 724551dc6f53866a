"""``xelm route``, ``score``, ``fill-mask`` and ``embed``: the routers and the ensemble, on any
number of texts (``--text`` repeated, ``--file``, stdin), one result per text, in input order."""

from __future__ import annotations

import io
import math

import numpy as np
from tqdm.auto import tqdm

from routing import XELM
from routing.api import mask_context
from routing.langid import saved_accuracy
from xelm.app.console import interactive, print_json
from xelm.app.textio import Inputs, emit_rows, lang_argument, read_inputs
from xelm.embed import embed_texts
from xelm.errors import XelmError
from xelm.fillmask import fill_mask
from xelm.hf import load_any_model

CHUNK = 256  # texts per call: a progress bar moves, and memory stays flat for big files


def _model(args):
    model = XELM.from_run(args.run_dir, args.registry, temperature=args.temperature, prior=args.prior)
    k, n = args.experts, len(model.names)
    if k is not None and not (1 <= k <= n):
        raise XelmError(f"--experts {k} is out of range: give a whole number from 1 to {n} (the registry's experts)")
    return model


def _inputs(args) -> Inputs:
    if getattr(args, "old_top_k", None) is not None:
        raise XelmError(f"--top-k lists tokens (fill-mask); in `xelm {args.command}` keep the K best experts "
                        f"with --experts {args.old_top_k}")
    return read_inputs(args.text, args.file, args.lang)


def _chunks(args, n: int, what: str):
    """Ranges of at most CHUNK texts, with a progress bar where a person watches a long job."""
    starts = range(0, n, CHUNK)
    bar = tqdm(starts, desc=what, unit="chunk", disable=not interactive(args) or n <= CHUNK, leave=False)
    for start in bar:
        yield slice(start, min(start + CHUNK, n))


def _lang(inputs: Inputs, sl: slice, router):
    lang = lang_argument(inputs, router)
    return lang[sl] if isinstance(lang, list) else lang


def _route_all(args, model: XELM, inputs: Inputs) -> list[tuple[slice, object]]:
    return [(sl, model.route(inputs.texts[sl], args.router, args.experts, _lang(inputs, sl, args.router)))
            for sl in _chunks(args, len(inputs.texts), "routing")]


def _route_line(r: dict) -> str:
    return ", ".join(f"{e['name']} {e['weight']:.3f}" for e in r["experts"])


def _notes(r: dict) -> list[str]:
    out = []
    if "language" in r:
        p = r.get("language_probability")
        out.append(f"language: {r['language']}" + (f" (identified, p={p:.3f})" if p is not None else ""))
    if "fallback" in r:
        out.append(f"fallback: {r['fallback']}")
    return out


def _short(text: str, n: int = 60) -> str:
    return repr(text if len(text) <= n else text[:n - 1] + "…")


def _single_text(args, inputs: Inputs) -> bool:
    """One text from --text: --json prints the result itself, as before batches existed."""
    return len(inputs.texts) == 1 and inputs.lines[0] is None


def cmd_route(args) -> int:
    inputs = _inputs(args)
    model = _model(args)
    rows = []
    for sl, routing in _route_all(args, model, inputs):
        for j, i in enumerate(range(len(inputs.texts))[sl]):
            rows.append({**inputs.source(i), "text": inputs.texts[i], **routing.to_json(j)})
    if emit_rows(rows, args):
        return 0
    if args.json:
        print_json({k: v for k, v in rows[0].items() if k != "text"} if _single_text(args, inputs) else rows)
        return 0
    width = max(32, *(len(e["name"]) + 2 for r in rows for e in r["experts"]))
    for n, row in enumerate(rows):
        if len(rows) > 1:
            print(("\n" if n else "") + f"text {n + 1}: {_short(row['text'])}")
        print(f"router: {row['router']}")
        print(f"{'expert':<{width}}{'weight':>8}")
        for e in row["experts"]:
            print(f"{e['name']:<{width}}{e['weight']:>8.4f}")
        for line in _notes(row):
            print(line)
    if any(r["router"] == "langid" for r in rows):
        acc = saved_accuracy(args.run_dir)
        print(f"language identifier: {acc['test_accuracy']:.1%} accurate on the test split "
              f"({acc['test_texts']} texts, {acc['languages']} languages)")
    return 0


def cmd_score(args) -> int:
    inputs = _inputs(args)
    model = _model(args)
    rows = []
    for sl, routing in _route_all(args, model, inputs):
        loss, count = model.score(inputs.texts[sl], routing, return_counts=True)
        for j, i in enumerate(range(len(inputs.texts))[sl]):
            value = float(loss[j])
            rows.append({**inputs.source(i), "text": inputs.texts[i],
                         "loss": round(value, 6) if math.isfinite(value) else None,
                         "masked_tokens": int(count[j]), **routing.to_json(j)})
    if emit_rows(rows, args):
        return 0
    if args.json:
        print_json(rows[0] if _single_text(args, inputs) else rows)
        return 0
    print(f"router: {rows[0]['router']}; loss in nats per masked token")
    print(f"{'loss':>8}{'masked':>8}  {'text':<62}experts")
    for row in rows:
        loss = "-" if row["loss"] is None else f"{row['loss']:.3f}"
        print(f"{loss:>8}{row['masked_tokens']:>8}  {_short(row['text']):<62}{_route_line(row)}")
    return 0


def _single(args):
    """(encoder, tokenizer) for ``--model PATH``, or None for the run's experts."""
    if args.model is None:
        if args.run_dir is None:
            raise XelmError("give --run-dir DIR (the run's experts) or --model PATH (one model)")
        return None
    if args.run_dir is not None:
        raise XelmError("give either --model PATH (one model) or --run-dir DIR (the run's experts), not both")
    return load_any_model(args.model)


def cmd_fill_mask(args) -> int:
    inputs = _inputs(args)
    single = _single(args)
    model = None if single else _model(args)
    rows, routes = [], []
    bar = tqdm(range(len(inputs.texts)), desc="fill-mask", unit="text", leave=False,
               disable=not interactive(args) or len(inputs.texts) < 8)
    for i in bar:
        text = inputs.texts[i]
        if single:
            result, route = fill_mask(*single, text, args.top_k), None
        else:
            lang = inputs.langs[i]
            routing = model.route([mask_context(text)], args.router, args.experts, lang)
            result, route = model.fill_mask(text, args.top_k, routing), routing.to_json(0)
        routes.append(route)
        rows.append({**inputs.source(i), "text": text, "fillers": result, **(route or {})})
    if emit_rows(rows, args):
        return 0
    if args.json:
        print_json(rows[0]["fillers"] if _single_text(args, inputs) else rows)
        return 0
    for n, (row, route) in enumerate(zip(rows, routes)):
        if len(rows) > 1:
            print(("\n" if n else "") + f"text {n + 1}: {_short(row['text'])}")
        if route is not None:
            print(f"experts ({route['router']} router): {_route_line(route)}")
            for line in _notes(route):
                print(line)
        _print_fillers(row["fillers"])
    return 0


def _print_fillers(result) -> None:
    for i, candidates in enumerate(result if isinstance(result[0], list) else [result]):
        print(f"<mask> {i + 1}:" if isinstance(result[0], list) else "<mask>:")
        for c in candidates:
            print(f"  {c['score']:>7.4f}  {c['token_str']!r:<20} {c['sequence']}")


def _embed_all(args, inputs: Inputs):
    """([N, dim] vectors, per text its experts or None)."""
    if single := _single(args):
        encoder, tok = single
        parts = [embed_texts(encoder, tok, inputs.texts[sl], max_len=min(encoder.cfg.max_len, 512))
                 for sl in _chunks(args, len(inputs.texts), "embedding")]
        return np.concatenate(parts), [None] * len(inputs.texts)
    model = _model(args)
    parts, experts = [], []
    for sl, routing in _route_all(args, model, inputs):
        parts.append(model.embed(inputs.texts[sl], routing))
        experts += [routing.experts(j) for j in range(len(parts[-1]))]
    return np.concatenate(parts), experts


def cmd_embed(args) -> int:
    inputs = _inputs(args)
    vectors_NxD, experts = _embed_all(args, inputs)
    if args.out is not None and args.out.suffix == ".npy":
        _save_npy(vectors_NxD.astype(np.float32), args.out)
        summary = {"out": str(args.out), "texts": len(vectors_NxD), "dim": int(vectors_NxD.shape[1])}
        print_json(summary) if args.json or args.jsonl else print(
            f"{len(vectors_NxD)} vector(s) of dim {vectors_NxD.shape[1]} written to {args.out} (float32, input order)")
        return 0
    rows = [{**inputs.source(i), "text": t, **({"experts": ex} if ex is not None else {}),
             "embedding": [round(float(v), 6) for v in vec]}
            for i, (t, vec, ex) in enumerate(zip(inputs.texts, vectors_NxD, experts))]
    if emit_rows(rows, args):
        return 0
    if args.json:
        print_json({"dim": int(vectors_NxD.shape[1]), "texts": rows})
        return 0
    for row, vec in zip(rows, vectors_NxD):
        head = " ".join(f"{v:+.3f}" for v in vec[:6])
        print(f"{_short(row['text'], 40):<44} dim {len(vec)}  [{head} ...]"
              + ("  experts: " + _route_line(row) if "experts" in row else ""))
    return 0


def _save_npy(array: np.ndarray, out) -> None:
    """``np.save`` through a temporary file and a rename (an interrupted write leaves no half file)."""
    buf = io.BytesIO()
    np.save(buf, array)
    tmp = out.with_name(f".{out.name}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.write_bytes(buf.getvalue())
        tmp.chmod(0o644)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
