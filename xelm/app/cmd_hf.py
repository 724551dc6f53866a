"""``xelm import-hf`` and ``xelm export-hf``: to and from transformers checkpoints (see xelm.hf),
and the run / registry side of an export: which model, and what its card says."""

from __future__ import annotations

from pathlib import Path

from experts.registry import run_registry
from xelm.app.console import print_json
from xelm.errors import XelmError
from xelm.files import read_json
from xelm.hf import export_hf, import_hf, load_any_model
from xelm.model import Encoder
from xelm.rundir import RunDir


def cmd_import(args) -> int:
    s = import_hf(args.path, args.run_dir, args.overrides)
    if args.json:
        print_json(s)
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
    model, tok, card = model_and_card(args.model, args.run_dir, args.expert, args.registry)
    out = export_hf(model, tok, args.out, card, overwrite=getattr(args, "overwrite", False))
    result = {"out": str(out), "architecture": read_json(out / "config.json")["architectures"][0],
              "name": card.get("name"), "languages": card.get("languages", [])}
    print_json(result) if args.json else print(f"exported {result['name'] or args.model} as "
                                                f"{result['architecture']} to {out}")
    return 0


def model_and_card(model: str | Path | None = None, run_dir: str | Path | None = None,
                   expert: str | None = None, registry: str | None = None) -> tuple[Encoder, object, dict]:
    """(encoder, tokenizer, card) for ``--model PATH`` or ``--run-dir DIR [--expert NAME]``
    (without --expert: the run's base)."""
    if (model is None) == (run_dir is None) or (expert and model is not None):
        raise XelmError("give either --model PATH or --run-dir DIR [--expert NAME]")
    if model is not None:
        enc, tok = load_any_model(model)
        return enc, tok, card_for(model)
    run = RunDir(run_dir)
    if expert:
        reg = run_registry(run, registry)
        card, enc = reg.card(expert), reg.load(expert)
        base = card_for(run.root).get("parent")
        card = {**card, "base": base} if base and card.get("parent") == "base" else card
    else:
        run.config()
        enc, card = run.base(), card_for(run.root)
    return enc, run.tokenizer(), card


def card_for(path: str | Path) -> dict:
    """What is known about a checkpoint for its model card: an expert's card.json, a run's base
    summary (``path`` the run directory or its base model), or nothing."""
    path = Path(path)
    for c in (path / "card.json", path.parent / "card.json"):
        if c.is_file():
            return read_json(c, "expert card")
    for run in (RunDir(path), RunDir(path.parent.parent)):
        if run.base_summary_file.is_file() and path.absolute() in (run.root.absolute(), run.base_model.absolute()):
            s = run.base_summary()
            imported = s.get("imported_from")
            return {"name": "base", "kind": "base encoder",
                    "parent": f"{s.get('name')} (imported)" if imported else "pre-trained from scratch",
                    "languages": sorted(s.get("tokens_by_lang") or []),
                    "tokens_trained": None if imported else s.get("tokens")}
    return {}
