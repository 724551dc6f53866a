"""``xelm route``, ``xelm fill-mask`` and ``xelm embed``: the routers and the ensemble.

``register(subparsers)`` adds the verbs to the main parser; user mistakes raise XelmError,
which the main CLI prints as one line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROUTER_HELP = ("language (needs --lang) | tfidf | posterior | langid; default: language with --lang, "
               "else tfidf")


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def _model(args):
    from routing import XELM

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
        _print_json(routing)
        return 0
    print(f"{'expert':<32}{'weight':>8}")
    for e in routing["experts"]:
        print(f"{e['name']:<32}{e['weight']:>8.4f}")
    for line in _notes(routing):
        print(line)
    if routing["router"] == "langid":
        from routing.langid import saved_accuracy

        acc = saved_accuracy(args.run_dir)
        print(f"language identifier: {acc['test_accuracy']:.1%} accurate on the test split "
              f"({acc['test_texts']} texts, {acc['languages']} languages)")
    return 0


def cmd_fill_mask(args) -> int:
    from routing.api import mask_context

    model = _model(args)
    routing = model.route([mask_context(args.text)], args.router, args.experts, args.lang)
    result = model.fill_mask(args.text, args.top_k, routing)
    if args.json:
        _print_json(result)
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
        _print_json({"dim": int(vectors.shape[1]), "texts": rows})
        return 0
    for row, vec in zip(rows, vectors):
        head = " ".join(f"{v:+.3f}" for v in vec[:6])
        print(f"{row['text'][:40]!r:<44} dim {len(vec)}  [{head} ...]  experts: "
              + ", ".join(f"{e['name']} {e['weight']:.3f}" for e in row["experts"]))
    return 0


def register(sub) -> None:
    def common(p: argparse.ArgumentParser, top_k_help: str) -> None:
        p.add_argument("--run-dir", type=Path, required=True)
        p.add_argument("--registry", help="registry path (default DIR/registry)")
        p.add_argument("--router", help=ROUTER_HELP)
        p.add_argument("--lang", help="the text's language, ISO 639-3 (the language router)")
        p.add_argument("--top-k", type=int, help=top_k_help)
        p.add_argument("--temperature", type=float, default=0.1, help="TF-IDF router temperature T in "
                                                                       "softmax(-d²/T) (default 0.1)")
        p.add_argument("--prior", default="uniform", help="posterior router prior: uniform | validation")
        p.add_argument("--json", action="store_true")

    p = sub.add_parser("route", help="which experts a text goes to, and with what weight")
    common(p, "keep the K best experts (renormalised)")
    p.add_argument("--text", required=True)
    p.set_defaults(func=cmd_route)

    p = sub.add_parser("fill-mask", help="predict the <mask> tokens with the routed mixture of experts")
    common(p, "tokens to list per mask (default 5)")
    p.add_argument("--text", required=True, help='text with one or more <mask>, e.g. "All human beings are <mask>"')
    p.add_argument("--experts", type=int, metavar="K", help="keep the K best experts (renormalised)")
    p.set_defaults(func=cmd_fill_mask, top_k=5)

    p = sub.add_parser("embed", help="sentence embeddings: the routed experts' weighted mean")
    common(p, "keep the K best experts (renormalised)")
    p.add_argument("--text", required=True, action="append", help="a text (repeat for several)")
    p.set_defaults(func=cmd_embed)
