"""Reading and writing Hugging Face model directories: safetensors (or a weights-only
``pytorch_model.bin``), config.json and the tokenizer. No model code from a checkpoint runs
here: configs are read without remote code and pickles only through torch's weights-only
loader."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from flax import nnx

from xelm.errors import XelmError, first_line
from xelm.files import check_output_dir, inside, read_json, write_json, write_text
from xelm.hf.card import model_card
from xelm.hf.families import converter_for, converter_for_hf
from xelm.model import Encoder

os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

MASK = "<mask>"  # the mask token users write for xelm, and the one an exported tokenizer has
MARK = "xelm"  # config.json key that marks a folder as an earlier export (and says where from)
# every file a transformers tokenizer's save_pretrained may write (an export may overwrite only these)
HF_TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                      "vocab.txt", "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model",
                      "tokenizer.model", "chat_template.jinja"}
MANIFEST = ".xelm-export.json"  # sha256 of each file an export wrote: a later export replaces only those unchanged
EXPORT_FILES = {"config.json", "model.safetensors", "README.md", MANIFEST} | HF_TOKENIZER_FILES


# ------------------------------------------------------------------------------- reading
def is_hf_dir(path: str | Path) -> bool:
    return (Path(path) / "config.json").is_file()


def read_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of an HF directory: model.safetensors (sharded or not), else pytorch_model.bin
    read weights-only (a pickle that holds code is refused, never run)."""
    from safetensors.numpy import load_file

    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, "safetensors index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise XelmError(f"safetensors index {index} is damaged (no weight_map): re-download the checkpoint")
        files = sorted({str(f) for f in weight_map.values()})
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    elif (path / "pytorch_model.bin").is_file():
        return _read_torch_bin(path / "pytorch_model.bin")
    else:
        raise XelmError(f"no weights in {path}: expected model.safetensors or pytorch_model.bin")
    out = {}
    for name in files:
        try:
            out.update(load_file(inside(path, name)))
        except XelmError:
            raise
        except Exception as e:  # a truncated or damaged file
            raise XelmError(f"{path / name} cannot be read ({first_line(e)}): re-download the checkpoint") from None
    return {k: v.astype(np.float32) if v.dtype.kind == "f" or v.dtype.name == "bfloat16" else v
            for k, v in out.items()}


def _read_torch_bin(file: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise XelmError(f"{file.parent} holds pytorch_model.bin only: install torch to read it, or convert "
                        "it to model.safetensors") from None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # weights-only unpickling refuses code; a damaged file fails too
        raise XelmError(f"{file} cannot be read as plain tensors ({type(e).__name__}; xelm never runs code "
                        "from a pickle): use a checkpoint with model.safetensors, or convert this one on "
                        "a machine you trust") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise XelmError(f"{file} is not a state dict of tensors: use a checkpoint with model.safetensors")
    return {k: v.float().numpy() for k, v in state.items() if v.is_floating_point()}


def load_hf(path: str | Path, dtype: str = "auto", name: str | None = None) -> tuple[Encoder, object, dict]:
    """(encoder, tokenizer, info) from a local HF model directory; ``info`` names the family and
    the head parameters the checkpoint lacked (a bare ``BertModel``: the MLM head is initialised)."""
    from transformers import AutoConfig, AutoTokenizer

    path = Path(path)
    if not is_hf_dir(path):
        raise XelmError(f"{path} is not a Hugging Face model directory (no config.json)")
    raw = read_json(path / "config.json", "model config", "re-download the checkpoint")
    try:
        hf = AutoConfig.from_pretrained(str(path))
    except Exception as e:
        raise XelmError(f"{path / 'config.json'} cannot be read by transformers ({first_line(e)})") from None
    conv = converter_for_hf(hf)
    cfg = replace(conv.config_from_hf(hf), dtype=dtype)
    model = Encoder(cfg, rngs=nnx.Rngs(0))
    missing = conv.to_xelm(read_tensors(path), model)
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:
        raise XelmError(f"the tokenizer in {path} cannot be loaded ({first_line(e)})") from None
    if tok.mask_token_id is None:
        raise XelmError(f"the tokenizer in {path} has no mask token: masked-LM training needs one")
    name = name or raw.get("_name_or_path") or path.absolute().name
    return model, tok, {"family": conv.family, "model_type": hf.model_type, "name": name, "initialised": missing}


# ------------------------------------------------------------------------------- writing
def is_export(path: str | Path) -> bool:
    """Whether ``path`` is an earlier ``xelm export-hf`` output (its config.json says so)."""
    try:
        return isinstance(read_json(Path(path) / "config.json").get(MARK), dict)
    except XelmError:
        return False


def check_export_dir(out: str | Path, overwrite: bool = False) -> Path:
    """An export target: absent, empty, or an earlier export holding only export files; anything
    else is the user's and is refused unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise XelmError(f"export target {out} is a file: give a directory")
    if overwrite or not out.is_dir() or not any(out.iterdir()):
        return out
    if not is_export(out):
        names = sorted(p.name for p in out.iterdir())
        raise XelmError(f"{out} is not empty and is not an earlier `xelm export-hf` output (it holds "
                        f"{', '.join(names[:5])}{', ...' if len(names) > 5 else ''}): choose a new folder, "
                        "or pass --overwrite to replace the files an export writes there")
    check_output_dir(out, EXPORT_FILES, flag="--overwrite")
    changed = changed_since_export(out)
    if changed:
        raise XelmError(f"{out} is an earlier export, but {', '.join(changed[:5])} changed since xelm wrote "
                        f"{'it' if len(changed) == 1 else 'them'} (an edited model card, say): choose a new "
                        "folder, or pass --overwrite to replace them")
    return out


def changed_since_export(out: Path) -> list[str]:
    """The export files in ``out`` whose bytes are not those the export recorded in its
    manifest (all of them when there is no readable manifest: nothing says they are ours)."""
    present = sorted(p.name for p in out.iterdir() if p.name in EXPORT_FILES - {MANIFEST})
    try:
        recorded = read_json(out / MANIFEST, "export manifest")
    except XelmError:
        return present
    return [name for name in present if recorded.get(name) != _sha256(out / name)]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_hf(model: Encoder, tok, out: str | Path, card: dict | None = None, overwrite: bool = False) -> Path:
    """Write ``out`` so that transformers' AutoModelForMaskedLM / AutoTokenizer / the fill-mask
    pipeline load it: config.json, model.safetensors, the tokenizer (mask token ``<mask>``) and
    a README.md model card. The folder is checked first and every file is written beside it,
    then moved in, so a failed export leaves the folder as it was."""
    from safetensors.numpy import save_file

    from xelm import __version__

    card = card or {}
    out = check_export_dir(out, overwrite)
    conv = converter_for(model.cfg)
    config = {**conv.config_to_hf(model.cfg, tok),
              MARK: {"exported_by": "xelm export-hf", "version": __version__, "name": card.get("name")}}
    earlier = is_export(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.export-"))
    try:
        write_json(stage / "config.json", config)
        save_file(conv.to_hf(model), str(stage / "model.safetensors"), metadata={"format": "pt"})
        mask = export_tokenizer(tok, stage, model.cfg.max_len)
        write_text(stage / "README.md", model_card(card, config, mask))
        write_json(stage / MANIFEST, {f.name: _sha256(f) for f in sorted(stage.iterdir())})
        for f in stage.iterdir():
            os.chmod(f, 0o644)  # as any file a user writes: others may read it
        out.mkdir(exist_ok=True)
        written = {f.name for f in stage.iterdir()}
        for name in written:
            os.replace(stage / name, out / name)
        if earlier:  # an earlier export's files this one did not write (e.g. another tokenizer's vocab)
            for name in EXPORT_FILES - written:
                (out / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out


def export_tokenizer(tok, out: Path, max_len: int) -> str:
    """Save ``tok`` in ``out`` with ``<mask>`` as its mask token (same id), so that the text a
    user writes for xelm works in transformers' fill-mask pipeline as well. The mask token
    absorbs the spaces around it, as xelm's fill-mask does. ``max_len``: the model's positions,
    where transformers' truncation must cut. Returns the mask token written."""
    tok.save_pretrained(str(out))
    config_file = out / "tokenizer_config.json"
    if config_file.is_file():
        write_json(config_file, {**read_json(config_file, "tokenizer config"), "model_max_length": max_len})
    old, mask_id = tok.mask_token, tok.mask_token_id
    if old == MASK or MASK in tok.get_vocab():  # already <mask>, or the name is taken: keep it
        return old
    spec = read_json(out / "tokenizer.json", "tokenizer")
    for t in spec.get("added_tokens", []):
        if t.get("id") == mask_id:
            t.update(content=MASK, lstrip=True, rstrip=True)
    vocab = (spec.get("model") or {}).get("vocab")
    if isinstance(vocab, list) and len(vocab) > mask_id and vocab[mask_id][0] == old:  # Unigram: [piece, score]
        vocab[mask_id][0] = MASK
    elif isinstance(vocab, dict) and vocab.get(old) == mask_id:  # WordPiece, BPE: piece -> id
        vocab[MASK] = vocab.pop(old)
    write_json(out / "tokenizer.json", spec)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (out / name).is_file():
            config = _renamed(read_json(out / name, "tokenizer config"), old, MASK)
            entry = (config.get("added_tokens_decoder") or {}).get(str(mask_id))
            if isinstance(entry, dict):
                entry.update(lstrip=True, rstrip=True)
            write_json(out / name, config)
    return MASK


def _renamed(obj, old: str, new: str):
    """``obj`` with every string ``old`` (and every {"content": old}) replaced by ``new``."""
    if isinstance(obj, dict):
        return {k: _renamed(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_renamed(v, old, new) for v in obj]
    return new if obj == old else obj
