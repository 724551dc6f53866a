"""``xelm route``, ``xelm fill-mask`` and ``xelm embed``: the routers and the ensemble."""

from __future__ import annotations

from routing import XELM
from routing.api import mask_context
from routing.langid import saved_accuracy
from xelm.app.console import print_json


def _model(args):
    return XELM.from_run(args.run_dir, args.registry, temperature=args.temperature, prior=args.prior)


def _route_line(r: dict) -> str:
    parts = [f"{e['name']} {e['weight']:.3f}" for e in r["experts"]]
    return ", ".join(parts)


def _notes(r: dict) -> list[str]:
    out = []
    if "language" in r:
        p = r.get("language_probability")
        out.append(f"language: {r['language']}" + (f" (identified, p={p:.3f})" if p is not None else ""))
    if "fallback" in r:
        out.append(f"fallback: {r['fallback']}")
    return out


def cmd_route(args) -> int:
    routing = _model(args).route([args.text], args.router, args.top_k, args.lang).to_json(0)
    if args.json:
        print_json(routing)
        return 0
    print(f"{'expert':<32}{'weight':>8}")
    for e in routing["experts"]:
        print(f"{e['name']:<32}{e['weight']:>8.4f}")
    for line in _notes(routing):
        print(line)
    if routing["router"] == "langid":
        acc = saved_accuracy(args.run_dir)
        print(f"language identifier: {acc['test_accuracy']:.1%} accurate on the test split "
              f"({acc['test_texts']} texts, {acc['languages']} languages)")
    return 0


def cmd_fill_mask(args) -> int:
    model = _model(args)
    routing = model.route([mask_context(args.text)], args.router, args.experts, args.lang)
    result = model.fill_mask(args.text, args.top_k, routing)
    if args.json:
        print_json(result)
        return 0
    routing = routing.to_json(0)
    print(f"experts: {_route_line(routing)}")
    for line in _notes(routing):
        print(line)
    for i, candidates in enumerate(result if isinstance(result[0], list) else [result]):
        print(f"<mask> {i + 1}:" if isinstance(result[0], list) else "<mask>:")
        for c in candidates:
            print(f"  {c['score']:>7.4f}  {c['token_str']!r:<20} {c['sequence']}")
    return 0


def cmd_embed(args) -> int:
    model = _model(args)
    routing = model.route(args.text, args.router, args.top_k, args.lang)
    vectors = model.embed(args.text, routing)
    rows = [{"text": t, "experts": routing.experts(i), "embedding": [round(float(v), 6) for v in vec]}
            for i, (t, vec) in enumerate(zip(args.text, vectors))]
    if args.json:
        print_json({"dim": int(vectors.shape[1]), "texts": rows})
        return 0
    for row, vec in zip(rows, vectors):
        head = " ".join(f"{v:+.3f}" for v in vec[:6])
        print(f"{row['text'][:40]!r:<44} dim {len(vec)}  [{head} ...]  experts: "
              + ", ".join(f"{e['name']} {e['weight']:.3f}" for e in row["experts"]))
    return 0
