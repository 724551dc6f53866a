"""The converter between a transformers checkpoint family and xelm's ``Encoder`` (Levanter's
``HFCheckpointConverter`` idea): a first-class object per family that maps the HF config to a
``ModelConfig`` and back, and the HF state dict to xelm parameters and back.

A family says only what differs (its config options and its name table, see ``bert.py`` and
``modernbert.py``); moving tensors by the table is shared here, so both directions use the
same names. A PyTorch ``Linear.weight`` is [out, in]; an ``nnx.Linear`` kernel is [in, out].
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from xelm.config import ModelConfig
from xelm.errors import XelmError
from xelm.model import Encoder

TO_XELM_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
TO_HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
# Which HF tensor holds each xelm leaf of a module of this kind.
LEAVES = {"linear": {"kernel": "weight", "bias": "bias"}, "norm": {"scale": "weight", "bias": "bias"},
          "embed": {"embedding": "weight"}}
HEAD = ("head_dense", "head_norm", "decoder_bias")  # a bare *Model checkpoint has no MLM head

Row = tuple[str, tuple[str, ...], str]  # (xelm module path, HF module name(s), kind)


def unsupported(family: str, option: str, value, why: str = "") -> XelmError:
    return XelmError(f"{family} option {option}={value!r} is not supported by xelm's encoder"
                     + (f" ({why})" if why else ""))


class HFConverter:
    """One model family, both ways. Subclasses set the class attributes and implement
    ``config_from_hf``, ``config_to_hf`` and ``table``."""

    family: str  # bert | roberta | modernbert
    model_types: tuple[str, ...]  # HF model_type values read as this family
    model_type: str  # written on export
    architecture: str  # the *ForMaskedLM class written on export
    prefix: str  # the backbone's prefix in *ForMaskedLM checkpoints
    zero_fill: bool = True  # export biases / token types the encoder lacks as zeros (BERT has them always)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # ------------------------------------------------------------------------ configs
    def config_from_hf(self, hf) -> ModelConfig:
        """The encoder config for HF config ``hf``; an option xelm lacks is an error naming it."""
        raise NotImplementedError

    def config_to_hf(self, cfg: ModelConfig, tok) -> dict:
        """config.json for ``cfg`` (special-token ids from the tokenizer ``tok``)."""
        raise NotImplementedError

    def can_export(self, cfg: ModelConfig) -> bool:
        """Whether an xelm encoder with ``cfg`` is exported as this family."""
        raise NotImplementedError

    def _common_hf(self, cfg: ModelConfig) -> dict:
        return dict(architectures=[self.architecture], model_type=self.model_type, vocab_size=cfg.vocab_size,
                    hidden_size=cfg.hidden, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                    intermediate_size=cfg.ffn, initializer_range=cfg.init_std, tie_word_embeddings=True,
                    dtype="float32", pad_token_id=cfg.pad_token_id)

    # ------------------------------------------------------------------------ tensors
    def table(self, cfg: ModelConfig) -> list[Row]:
        """(xelm module path, HF module name(s) -- three for BERT's q/k/v --, kind) per module."""
        raise NotImplementedError

    def normalise(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Checkpoint names as a *ForMaskedLM has them: the backbone prefix added to a bare
        *Model checkpoint's names."""
        bare = not any(k.startswith(self.prefix) for k in tensors)
        return {self.prefix + k if bare else k: v for k, v in tensors.items()}

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
        """The model's tensors under HF names. With ``zero_fill``, biases or token types the
        encoder lacks are exported as zeros (exact: a zero bias adds nothing)."""
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        cfg, out = model.cfg, {}
        for path, names, kind in self.table(cfg):
            parent, leaf = _parent(params, path)
            if kind == "param":  # the decoder bias
                if parent is not None:
                    out[names[0]] = np.asarray(parent[leaf], np.float32)
                elif self.zero_fill:
                    out[names[0]] = np.zeros(cfg.vocab_size, np.float32)
                continue
            if parent is None:  # only type_embed: one all-zero token type
                out[f"{names[0]}.weight"] = np.zeros((1, cfg.hidden), np.float32)
                continue
            sub = parent[leaf]
            for key, hf_leaf in LEAVES[kind].items():
                if key in sub:
                    arr = np.asarray(sub[key], np.float32)
                elif self.zero_fill:  # a bias xelm switched off
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
