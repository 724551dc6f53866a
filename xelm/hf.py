"""Hugging Face interoperability: one converter per model family (BERT, RoBERTa / XLM-R,
ModernBERT) between transformers checkpoints and xelm's ``Encoder``, both ways.

transformers 5 has no Flax classes, so checkpoints are read and written as numpy arrays
(safetensors) and renamed here, from one name table per family that serves both directions.
A PyTorch ``Linear.weight`` is [out, in]; an ``nnx.Linear`` kernel is [in, out].
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from flax import nnx

from xelm.config import ModelConfig, RunConfig, TokenizerConfig, apply_overrides, from_dict, to_dict
from xelm.errors import XelmError
from xelm.model import Encoder

os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

TO_XELM_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
TO_HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
# Which HF tensor holds each xelm leaf of a module of this kind.
LEAVES = {"linear": {"kernel": "weight", "bias": "bias"}, "norm": {"scale": "weight", "bias": "bias"},
          "embed": {"embedding": "weight"}}
HEAD = ("head_dense", "head_norm", "decoder_bias")  # a bare *Model checkpoint has no MLM head


def _unsupported(family: str, option: str, value, why: str = "") -> XelmError:
    return XelmError(f"{family} option {option}={value!r} is not supported by xelm's encoder"
                     + (f" ({why})" if why else ""))


@dataclass(frozen=True)
class Converter:
    """A model family's names: HF config <-> ``ModelConfig``, HF tensors <-> xelm parameters."""

    family: str  # bert | roberta | modernbert
    model_type: str  # written on export
    architecture: str  # the *ForMaskedLM class written on export
    prefix: str  # the backbone's prefix in *ForMaskedLM checkpoints

    # --------------------------------------------------------------------- configs
    def config_from_hf(self, hf) -> ModelConfig:
        """The encoder config for HF config ``hf``; an option xelm lacks is an error naming it."""
        f = self.family
        if not getattr(hf, "tie_word_embeddings", True):
            raise _unsupported(f, "tie_word_embeddings", False, "xelm ties the decoder to the embeddings")
        if f == "modernbert":
            return self._modernbert_config(hf)
        for option, ok in (("position_embedding_type", "absolute"), ("is_decoder", False),
                           ("add_cross_attention", False)):
            if getattr(hf, option, ok) != ok:
                raise _unsupported(f, option, getattr(hf, option))
        act = TO_XELM_ACT.get(hf.hidden_act)
        if act is None or (f == "roberta" and act != "gelu"):  # RoBERTa's LM head is always exact GELU
            raise _unsupported(f, "hidden_act", hf.hidden_act)
        offset = hf.pad_token_id + 1 if f == "roberta" else 0  # RoBERTa numbers positions after padding
        return ModelConfig(
            arch="bert", vocab_size=hf.vocab_size, hidden=hf.hidden_size, layers=hf.num_hidden_layers,
            heads=hf.num_attention_heads, ffn=hf.intermediate_size,
            max_len=hf.max_position_embeddings - offset, norm_eps=hf.layer_norm_eps, bias=True,
            decoder_bias=True, head_bias=True, activation=act, type_vocab_size=hf.type_vocab_size,
            position_offset=offset, pad_token_id=hf.pad_token_id or 0, init_std=hf.initializer_range)

    def _modernbert_config(self, hf) -> ModelConfig:
        f = "modernbert"
        if not hf.attention_bias == hf.mlp_bias == hf.norm_bias:
            raise _unsupported(f, "attention_bias/mlp_bias/norm_bias", (hf.attention_bias, hf.mlp_bias, hf.norm_bias),
                               "xelm has one switch for all three")
        if hf.attention_bias and not hf.classifier_bias:
            raise _unsupported(f, "classifier_bias", False, "with attention_bias=True")
        if hf.classifier_activation != hf.hidden_activation or hf.hidden_activation not in TO_XELM_ACT:
            raise _unsupported(f, "hidden_activation/classifier_activation",
                               (hf.hidden_activation, hf.classifier_activation))
        rope = hf.rope_parameters
        for kind in ("full_attention", "sliding_attention"):
            if rope[kind].get("rope_type", "default") != "default":
                raise _unsupported(f, f"rope_parameters.{kind}.rope_type", rope[kind]["rope_type"])
        is_global = [t == "full_attention" for t in hf.layer_types]
        every = next((i for i in range(1, len(is_global)) if is_global[i]), len(is_global))  # the period
        if not is_global[0] or is_global != [i % every == 0 for i in range(len(is_global))]:
            raise _unsupported(f, "layer_types", hf.layer_types,
                               "xelm makes layer i global when i % global_every == 0")
        return ModelConfig(
            arch="modernbert", vocab_size=hf.vocab_size, hidden=hf.hidden_size, layers=hf.num_hidden_layers,
            heads=hf.num_attention_heads, ffn=hf.intermediate_size, max_len=hf.max_position_embeddings,
            local_window=0 if all(is_global) else hf.local_attention, global_every=every,
            rope_theta=float(rope["full_attention"]["rope_theta"]),
            rope_theta_local=float(rope["sliding_attention"]["rope_theta"]), norm_eps=hf.norm_eps,
            bias=hf.attention_bias, decoder_bias=hf.decoder_bias, head_bias=hf.classifier_bias,
            activation=TO_XELM_ACT[hf.hidden_activation], pad_token_id=hf.pad_token_id or 0,
            init_std=hf.initializer_range)

    def config_to_hf(self, cfg: ModelConfig, tok) -> dict:
        """config.json for ``cfg`` (special-token ids from the tokenizer ``tok``)."""
        ids = {"pad_token_id": cfg.pad_token_id}
        common = dict(architectures=[self.architecture], model_type=self.model_type, vocab_size=cfg.vocab_size,
                      hidden_size=cfg.hidden, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                      intermediate_size=cfg.ffn, initializer_range=cfg.init_std, tie_word_embeddings=True,
                      dtype="float32")
        if self.family == "modernbert":
            cls = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
            sep = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
            act = TO_HF_ACT[cfg.activation]
            return {**common, **ids, "cls_token_id": cls, "bos_token_id": cls, "sep_token_id": sep,
                    "eos_token_id": sep, "hidden_activation": act, "classifier_activation": act,
                    "max_position_embeddings": cfg.max_len, "norm_eps": cfg.norm_eps,
                    "norm_bias": cfg.bias, "attention_bias": cfg.bias, "mlp_bias": cfg.bias,
                    "classifier_bias": cfg.head_bias or cfg.bias, "decoder_bias": cfg.decoder_bias,
                    "local_attention": cfg.local_window or 128,
                    "layer_types": ["full_attention" if cfg.is_global(i) else "sliding_attention"
                                    for i in range(cfg.layers)],
                    "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta},
                                        "sliding_attention": {"rope_type": "default",
                                                              "rope_theta": cfg.rope_theta_local}}}
        if self.family == "roberta" and cfg.position_offset != cfg.pad_token_id + 1:
            raise XelmError(f"cannot export as {self.model_type}: position_offset {cfg.position_offset} "
                            f"must be pad_token_id + 1 = {cfg.pad_token_id + 1}")
        if self.family == "roberta" and cfg.activation != "gelu":
            raise XelmError(f"cannot export as {self.model_type}: its LM head is exact GELU, not {cfg.activation}")
        return {**common, **ids, "hidden_act": "gelu" if cfg.activation == "gelu" else "gelu_new",
                "layer_norm_eps": cfg.norm_eps, "max_position_embeddings": cfg.max_len + cfg.position_offset,
                "type_vocab_size": max(cfg.type_vocab_size, 1), "position_embedding_type": "absolute",
                "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}

    # --------------------------------------------------------------------- tensors
    def table(self, cfg: ModelConfig) -> list[tuple[str, tuple[str, ...], str]]:
        """(xelm module path, HF module name(s) -- three for BERT's q/k/v -- , kind)."""
        p = self.prefix
        if self.family == "modernbert":
            rows = [("embed", (f"{p}embeddings.tok_embeddings",), "embed"),
                    ("embed_norm", (f"{p}embeddings.norm",), "norm")]
            for i in range(cfg.layers):
                h = f"{p}layers.{i}."
                rows += [(f"layers.{i}.attn.qkv", (h + "attn.Wqkv",), "linear"),
                         (f"layers.{i}.attn.out", (h + "attn.Wo",), "linear"),
                         (f"layers.{i}.mlp.wi", (h + "mlp.Wi",), "linear"),
                         (f"layers.{i}.mlp.wo", (h + "mlp.Wo",), "linear"),
                         (f"layers.{i}.mlp_norm", (h + "mlp_norm",), "norm")]
                rows += [(f"layers.{i}.attn_norm", (h + "attn_norm",), "norm")] if i else []
            return rows + [("final_norm", (f"{p}final_norm",), "norm"), ("head_dense", ("head.dense",), "linear"),
                           ("head_norm", ("head.norm",), "norm"), ("decoder_bias", ("decoder.bias",), "param")]
        e = f"{p}embeddings."
        rows = [("embed", (e + "word_embeddings",), "embed"), ("pos_embed", (e + "position_embeddings",), "embed"),
                ("type_embed", (e + "token_type_embeddings",), "embed"), ("embed_norm", (e + "LayerNorm",), "norm")]
        for i in range(cfg.layers):
            h = f"{p}encoder.layer.{i}."
            rows += [(f"layers.{i}.attn.qkv", tuple(h + f"attention.self.{n}" for n in ("query", "key", "value")),
                      "linear"),
                     (f"layers.{i}.attn.out", (h + "attention.output.dense",), "linear"),
                     (f"layers.{i}.attn_norm", (h + "attention.output.LayerNorm",), "norm"),
                     (f"layers.{i}.mlp.wi", (h + "intermediate.dense",), "linear"),
                     (f"layers.{i}.mlp.wo", (h + "output.dense",), "linear"),
                     (f"layers.{i}.mlp_norm", (h + "output.LayerNorm",), "norm")]
        head = ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm", "cls.predictions.bias") \
            if self.family == "bert" else ("lm_head.dense", "lm_head.layer_norm", "lm_head.bias")
        return rows + [("head_dense", (head[0],), "linear"), ("head_norm", (head[1],), "norm"),
                       ("decoder_bias", (head[2],), "param")]

    def normalise(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Checkpoint names as a *ForMaskedLM has them: old LayerNorm gamma/beta renamed, the
        backbone prefix added to a bare *Model checkpoint's names."""
        out = {}
        bare = not any(k.startswith(self.prefix) for k in tensors)
        for k, v in tensors.items():
            k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
            out[self.prefix + k if bare else k] = v
        for alias, name in (("cls.predictions.decoder.bias", "cls.predictions.bias"),
                            ("lm_head.decoder.bias", "lm_head.bias")):
            if alias in out and name not in out:
                out[name] = out[alias]
        return out

    def to_xelm(self, tensors: dict[str, np.ndarray], model: Encoder) -> list[str]:
        """Load ``tensors`` (HF names) into ``model`` in place; returns the head parameters that
        were missing (left initialised). Any other missing or mis-shaped tensor is an error."""
        tensors = self.normalise(tensors)
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        missing = []
        for path, names, kind in self.table(model.cfg):
            parent, leaf = _parent(params, path)
            if parent is None:
                continue  # the encoder has no such module (e.g. no token types)
            for key in ([None] if kind == "param" else sorted(parent[leaf])):
                hf_keys = list(names) if kind == "param" else [f"{n}.{LEAVES[kind][key]}" for n in names]
                if not all(k in tensors for k in hf_keys):
                    if path in HEAD:
                        missing.append(path)
                        continue
                    absent = next(k for k in hf_keys if k not in tensors)
                    raise XelmError(f"{self.family} checkpoint lacks tensor {absent!r} (needed for {path})")
                parts = [np.asarray(tensors[k], np.float32) for k in hf_keys]
                value = np.concatenate([a.T if key == "kernel" else a for a in parts], axis=-1)
                target = parent[leaf] if kind == "param" else parent[leaf][key]
                if value.shape != target.shape:
                    raise XelmError(f"{self.family} tensor {hf_keys[0]!r} has shape {parts[0].shape}, which "
                                    f"does not fit {path} of shape {target.shape} (is config.json right?)")
                if kind == "param":
                    parent[leaf] = value
                else:
                    parent[leaf][key] = value
        state = nnx.state(model, nnx.Param)
        nnx.replace_by_pure_dict(state, params)
        nnx.update(model, state)
        return sorted(set(missing))

    def to_hf(self, model: Encoder) -> dict[str, np.ndarray]:
        """The model's tensors under HF names; biases or token types the encoder lacks are exported
        as zeros (exact: a zero bias adds nothing), since BERT-family modules always have them."""
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        cfg, out = model.cfg, {}
        for path, names, kind in self.table(cfg):
            parent, leaf = _parent(params, path)
            if kind == "param":  # the decoder bias; ModernBERT can do without one
                if parent is not None or self.family != "modernbert":
                    out[names[0]] = (np.asarray(parent[leaf], np.float32) if parent is not None
                                     else np.zeros(cfg.vocab_size, np.float32))
                continue
            if parent is None:  # only type_embed: one all-zero token type
                out[f"{names[0]}.weight"] = np.zeros((1, cfg.hidden), np.float32)
                continue
            sub = parent[leaf]
            for key, hf_leaf in LEAVES[kind].items():
                if key in sub:
                    arr = np.asarray(sub[key], np.float32)
                elif self.family != "modernbert":  # a BERT-family bias xelm switched off
                    arr = np.zeros(sub["kernel"].shape[-1] if "kernel" in sub else sub["scale"].shape, np.float32)
                else:
                    continue
                for name, part in zip(names, np.split(arr, len(names), axis=-1)):
                    out[f"{name}.{hf_leaf}"] = np.ascontiguousarray(part.T if key == "kernel" else part)
        return out


def _parent(params: dict, path: str):
    """(the dict holding ``path``'s last part, that part), or (None, None) if it is absent."""
    *heads, last = path.split(".")
    node = params
    for h in heads:
        h = int(h) if h.isdigit() else h
        if not isinstance(node, dict) or h not in node:
            return None, None
        node = node[h]
    return (node, last) if isinstance(node, dict) and node.get(last) is not None else (None, None)


CONVERTERS = {
    "bert": Converter("bert", "bert", "BertForMaskedLM", "bert."),
    "roberta": Converter("roberta", "xlm-roberta", "XLMRobertaForMaskedLM", "roberta."),
    "modernbert": Converter("modernbert", "modernbert", "ModernBertForMaskedLM", "model."),
}
MODEL_TYPES = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "modernbert": "modernbert"}


def converter_for(cfg: ModelConfig) -> Converter:
    """The family an xelm encoder exports as."""
    if cfg.arch == "modernbert":
        return CONVERTERS["modernbert"]
    return CONVERTERS["roberta" if cfg.position_offset else "bert"]


# ------------------------------------------------------------------------------- reading
def is_hf_dir(path: str | Path) -> bool:
    return (Path(path) / "config.json").is_file()


def read_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of an HF directory: model.safetensors (sharded or not), else pytorch_model.bin."""
    from safetensors.numpy import load_file

    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    elif (path / "pytorch_model.bin").is_file():
        try:
            import torch
        except ImportError:
            raise XelmError(f"{path} holds pytorch_model.bin only: install torch to read it, or convert it "
                            "to model.safetensors") from None
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in state.items() if v.is_floating_point()}
    else:
        raise XelmError(f"no weights in {path}: expected model.safetensors or pytorch_model.bin")
    out = {}
    for name in files:
        try:
            out.update(load_file(path / name))
        except Exception as e:  # a truncated or damaged file
            raise XelmError(f"{path / name} cannot be read ({type(e).__name__}: {e})") from None
    return {k: v.astype(np.float32) if v.dtype.kind == "f" or v.dtype.name == "bfloat16" else v
            for k, v in out.items()}


def load_hf(path: str | Path, dtype: str = "auto") -> tuple[Encoder, object, dict]:
    """(encoder, tokenizer, info) from a local HF model directory; ``info`` names the family and
    the head parameters the checkpoint lacked (a bare ``BertModel``: the MLM head is initialised)."""
    from transformers import AutoConfig, AutoTokenizer

    path = Path(path)
    if not is_hf_dir(path):
        raise XelmError(f"{path} is not a Hugging Face model directory (no config.json)")
    try:
        hf = AutoConfig.from_pretrained(str(path))
    except Exception as e:
        raise XelmError(f"{path / 'config.json'} cannot be read by transformers ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]})") from None
    family = MODEL_TYPES.get(hf.model_type)
    if family is None:
        arch = ", ".join(getattr(hf, "architectures", None) or []) or "?"
        raise XelmError(f"architecture {arch} (model_type {hf.model_type!r}) is not supported: xelm imports "
                        f"{', '.join(sorted(MODEL_TYPES))}")
    conv = CONVERTERS[family]
    cfg = replace(conv.config_from_hf(hf), dtype=dtype)
    model = Encoder(cfg, rngs=nnx.Rngs(0))
    missing = conv.to_xelm(read_tensors(path), model)
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:
        raise XelmError(f"the tokenizer in {path} cannot be loaded ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    if tok.mask_token_id is None:
        raise XelmError(f"the tokenizer in {path} has no mask token: masked-LM training needs one")
    name = json.loads((path / "config.json").read_text()).get("_name_or_path") or path.absolute().name
    return model, tok, {"family": family, "model_type": hf.model_type, "name": name, "initialised": missing}


def _find_tokenizer(path: Path):
    """The tokenizer of an xelm checkpoint: PATH/tokenizer, or a run directory's above it."""
    from xelm.tokenizer import load_tokenizer

    for d in [path, *list(path.absolute().parents)[:4]]:
        if (d / "tokenizer" / "tokenizer.json").is_file():
            return load_tokenizer(d / "tokenizer")
    raise XelmError(f"no tokenizer for the checkpoint {path}: expected a tokenizer/ folder in it or in the "
                    "run directory above it")


def load_any_model(path: str | Path) -> tuple[Encoder, object]:
    """(encoder, tokenizer) for ``--model PATH``: an HF model directory (config.json), an xelm
    weights directory (model.json), an expert's registry folder (weights/), or a run directory
    (its base). What commands taking ``--model`` call."""
    from xelm.weights import load_weights

    path = Path(path)
    if is_hf_dir(path):
        model, tok, _ = load_hf(path)
        return model, tok
    for weights in (path, path / "weights", path / "base" / "model"):
        if (weights / "model.json").is_file():
            return load_weights(weights, name=str(path)), _find_tokenizer(path)
    if not path.exists():
        raise XelmError(f"model path {path} does not exist")
    raise XelmError(f"{path} is neither a Hugging Face model directory (config.json) nor an xelm checkpoint "
                    "(model.json, an expert folder or a run directory)")


# ------------------------------------------------------------------------------- import
def import_hf(path: str | Path, run_dir: str | Path, overrides: list[str] = ()) -> dict:
    """Make a local HF checkpoint the base of ``run_dir`` (weights, tokenizer, config.yaml and a
    complete base/summary.json), so clustering, experts and routing run on it unchanged."""
    from xelm import rundir
    from xelm.weights import save_weights

    run_dir = Path(run_dir)
    if any(o.split("=", 1)[0].split(".")[0] == "model" for o in overrides):
        raise XelmError("model.* cannot be overridden on import: the checkpoint decides the model")
    model, tok, info = load_hf(path)
    if len(tok) > model.cfg.vocab_size:
        raise XelmError(f"the tokenizer in {path} has {len(tok)} tokens, more than the model's vocab_size "
                        f"{model.cfg.vocab_size}")
    base = to_dict(RunConfig(model=model.cfg, tokenizer=TokenizerConfig(vocab_size=model.cfg.vocab_size)))
    cfg = from_dict(apply_overrides(base, list(overrides)))
    done = run_dir / "base" / "summary.json"
    rundir.prepare(run_dir, cfg)
    if done.exists() and json.loads(done.read_text()).get("complete"):
        return {**json.loads(done.read_text()), "skipped": True}
    if (run_dir / "tokenizer").exists():
        shutil.rmtree(run_dir / "tokenizer")
    tok.save_pretrained(str(run_dir / "tokenizer"))
    digest = save_weights(model, run_dir / "base" / "model")
    summary = {"complete": True, "imported_from": str(Path(path).absolute()), **info, "step": 0, "tokens": 0,
               "loss": None, "checksum": digest, "tokens_by_lang": {}}
    done.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ------------------------------------------------------------------------------- export
def export_hf(model: Encoder, tok, out: str | Path, card: dict | None = None) -> Path:
    """Write ``out`` so that transformers' AutoModelForMaskedLM / AutoTokenizer load it:
    config.json, model.safetensors, the tokenizer, and a README.md model card."""
    from safetensors.numpy import save_file

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise XelmError(f"export target {out} is a file: give a directory")
    conv = converter_for(model.cfg)
    config = conv.config_to_hf(model.cfg, tok)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(conv.to_hf(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(str(out))
    (out / "README.md").write_text(model_card(card or {}, config))
    return out


def model_card(card: dict, config: dict) -> str:
    """A short model card: front matter for the Hub, then what the expert was trained on."""
    langs = card.get("languages") or []
    front = ["---", "library_name: transformers", "pipeline_tag: fill-mask", "tags: [xelm, x-elm]"]
    front += ["language:"] + [f"- {lang}" for lang in langs] if langs else []
    name = card.get("name", "model")
    tokens = card.get("tokens_trained")
    rows = [("languages", ", ".join(langs) or "not recorded"), ("parent", card.get("parent", "not recorded")),
            ("base checkpoint", card.get("base")),
            ("training tokens", f"{tokens:,}" if isinstance(tokens, int) else "not recorded"),
            ("validation loss", card.get("validation_loss")), ("architecture", config["architectures"][0]),
            ("checksum (xelm)", card.get("checksum"))]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows if v is not None)
    return "\n".join(front + ["---", "", f"# xelm {card.get('kind', 'expert')} `{name}`", "",
                              "A cross-lingual expert language model (X-ELM) exported by `xelm export-hf`.", "",
                              "| | |", "|---|---|", table, "", "```python",
                              "from transformers import AutoModelForMaskedLM, AutoTokenizer",
                              "model = AutoModelForMaskedLM.from_pretrained(PATH)",
                              "tokenizer = AutoTokenizer.from_pretrained(PATH)", "```", ""])


def model_and_card(model: str | Path | None = None, run_dir: str | Path | None = None,
                   expert: str | None = None, registry: str | None = None) -> tuple[Encoder, object, dict]:
    """(encoder, tokenizer, card) for ``--model PATH`` or ``--run-dir DIR [--expert NAME]``
    (without --expert: the run's base)."""
    from experts.training import load_base, registry_of
    from xelm.tokenizer import load_tokenizer

    if (model is None) == (run_dir is None) or (expert and model is not None):
        raise XelmError("give either --model PATH or --run-dir DIR [--expert NAME]")
    if model is not None:
        enc, tok = load_any_model(model)
        return enc, tok, card_for(model)
    if expert:
        reg = registry_of(run_dir, registry)
        card, enc = reg.card(expert), reg.load(expert)
        base = card_for(run_dir).get("parent")
        card = {**card, "base": base} if base and card.get("parent") == "base" else card
    else:
        enc, card = load_base(run_dir), card_for(run_dir)
    return enc, load_tokenizer(Path(run_dir) / "tokenizer"), card


def card_for(path: str | Path) -> dict:
    """What is known about a checkpoint for its model card: an expert's card.json, a run's base
    summary (``path`` the run directory or its base/model), or nothing."""
    path = Path(path)
    for c in (path / "card.json", path.parent / "card.json"):
        if c.is_file():
            return json.loads(c.read_text())
    for summary in (path / "base" / "summary.json", path.parent / "summary.json"):
        if summary.is_file() and summary.parent.name == "base":
            s = json.loads(summary.read_text())
            imported = s.get("imported_from")
            return {"name": "base", "kind": "base encoder",
                    "parent": f"{s.get('name')} (imported)" if imported else "pre-trained from scratch",
                    "languages": sorted(s.get("tokens_by_lang") or []),
                    "tokens_trained": None if imported else s.get("tokens")}
    return {}


# ------------------------------------------------------------------------------- fill-mask
def fill_mask(model: Encoder, tok, text: str, top_k: int = 5):
    """Top-k fillers for each mask token in ``text``, as transformers' fill-mask pipeline returns
    them: a list of {score, token, token_str, sequence} (a list of such lists for several masks).
    ``<mask>`` in the text also stands for the tokenizer's own mask token (e.g. ``[MASK]``)."""
    import jax
    import jax.numpy as jnp

    if top_k < 1:
        raise XelmError(f"top-k {top_k} must be at least 1")
    if tok.mask_token != "<mask>":
        text = text.replace("<mask>", tok.mask_token)
    enc = tok(text, return_tensors="np", truncation=True, max_length=model.cfg.max_len)
    ids = enc["input_ids"].astype(np.int32)
    where = np.flatnonzero(ids[0] == tok.mask_token_id)
    if not len(where):
        raise XelmError(f"no mask token {tok.mask_token!r} in the text: put one where a word should be predicted")
    types = enc.get("token_type_ids") if model.type_embed is not None else None
    hidden = model(jnp.asarray(ids), type_ids_BxS=None if types is None else jnp.asarray(types, jnp.int32))
    probs = np.asarray(jax.nn.softmax(model.mlm_logits(hidden[0, where]), axis=-1))
    rows = []
    for i, p in zip(where, probs):
        row = []
        for t in np.argsort(-p, kind="stable")[:top_k]:
            seq = ids[0].copy()
            seq[i] = t
            seq = seq[seq != tok.pad_token_id]
            row.append({"score": float(p[t]), "token": int(t), "token_str": tok.decode([int(t)]),
                        "sequence": tok.decode(seq, skip_special_tokens=len(where) == 1)})
        rows.append(row)
    return rows[0] if len(rows) == 1 else rows
