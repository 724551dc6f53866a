"""``xelm import-hf`` and ``xelm export-hf``: to and from transformers checkpoints (see xelm.hf)."""

from __future__ import annotations

import json
from pathlib import Path


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def cmd_import(args) -> int:
    from xelm.hf import import_hf

    s = import_hf(args.path, args.run_dir, args.overrides)
    if args.json:
        _print_json(s)
        return 0
    if s.get("skipped"):
        print(f"{args.run_dir} already has its base (imported from {s.get('imported_from')})")
        return 0
    print(f"imported {s['family']} checkpoint {args.path} as the base of {args.run_dir}")
    if s["initialised"]:
        print(f"note: the checkpoint has no MLM head ({', '.join(s['initialised'])} initialised); "
              "train experts to fit it")
    return 0


def cmd_export(args) -> int:
    from xelm.hf import export_hf, model_and_card

    model, tok, card = model_and_card(args.model, args.run_dir, args.expert, args.registry)
    out = export_hf(model, tok, args.out, card)
    result = {"out": str(out), "architecture": json.loads((out / "config.json").read_text())["architectures"][0],
              "name": card.get("name"), "languages": card.get("languages", [])}
    _print_json(result) if args.json else print(f"exported {result['name'] or args.model} as "
                                                f"{result['architecture']} to {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("import-hf", help="make a local Hugging Face checkpoint (BERT, XLM-R, ModernBERT) "
                                         "a run's base encoder")
    p.add_argument("path", type=Path, help="HF model directory: config.json, weights, tokenizer files")
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides for later stages, before --run-dir: e.g. experts.k=4 data.seq_len=256")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export-hf", help="write an expert (or any checkpoint) as a transformers model directory")
    p.add_argument("--model", type=Path, help="an xelm checkpoint, expert folder, run directory or HF directory")
    p.add_argument("--run-dir", type=Path)
    p.add_argument("--expert", help="the expert to export (default: the run's base)")
    p.add_argument("--registry", help="registry path (default DIR/registry)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)
