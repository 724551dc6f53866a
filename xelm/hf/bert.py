"""BERT and RoBERTa / XLM-R: learned absolute positions, post-norm, GELU, biases everywhere.

RoBERTa differs from BERT in three things only: positions are numbered after the padding id,
its LM head is always exact GELU, and its head tensors are named ``lm_head.*``.
"""

from __future__ import annotations

import numpy as np

from xelm.config import ModelConfig
from xelm.errors import XelmError
from xelm.hf.converter import TO_XELM_ACT, HFConverter, Row, unsupported


class BertConverter(HFConverter):
    family, model_types, model_type = "bert", ("bert",), "bert"
    architecture, prefix = "BertForMaskedLM", "bert."
    head_names = ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm", "cls.predictions.bias")

    def position_offset(self, hf) -> int:
        return 0

    def check_activation(self, act: str | None, hf) -> None:
        if act is None:
            raise unsupported(self.family, "hidden_act", hf.hidden_act)

    def config_from_hf(self, hf) -> ModelConfig:
        f = self.family
        if not getattr(hf, "tie_word_embeddings", True):
            raise unsupported(f, "tie_word_embeddings", False, "xelm ties the decoder to the embeddings")
        for option, ok in (("position_embedding_type", "absolute"), ("is_decoder", False),
                           ("add_cross_attention", False)):
            if getattr(hf, option, ok) != ok:
                raise unsupported(f, option, getattr(hf, option))
        act = TO_XELM_ACT.get(hf.hidden_act)
        self.check_activation(act, hf)
        offset = self.position_offset(hf)
        return ModelConfig(
            arch="bert", vocab_size=hf.vocab_size, hidden=hf.hidden_size, layers=hf.num_hidden_layers,
            heads=hf.num_attention_heads, ffn=hf.intermediate_size,
            max_len=hf.max_position_embeddings - offset, norm_eps=hf.layer_norm_eps, bias=True,
            decoder_bias=True, head_bias=True, activation=act, type_vocab_size=hf.type_vocab_size,
            position_offset=offset, pad_token_id=hf.pad_token_id or 0, init_std=hf.initializer_range)

    def can_export(self, cfg: ModelConfig) -> bool:
        return cfg.arch == "bert" and not cfg.position_offset

    def check_export(self, cfg: ModelConfig) -> None:
        """Raise if ``cfg`` cannot be written as this family."""

    def config_to_hf(self, cfg: ModelConfig, tok) -> dict:
        self.check_export(cfg)
        return {**self._common_hf(cfg), "hidden_act": "gelu" if cfg.activation == "gelu" else "gelu_new",
                "layer_norm_eps": cfg.norm_eps, "max_position_embeddings": cfg.max_len + cfg.position_offset,
                "type_vocab_size": max(cfg.type_vocab_size, 1), "position_embedding_type": "absolute",
                "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}

    def table(self, cfg: ModelConfig) -> list[Row]:
        p, e = self.prefix, f"{self.prefix}embeddings."
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
        dense, norm, bias = self.head_names
        return rows + [("head_dense", (dense,), "linear"), ("head_norm", (norm,), "norm"),
                       ("decoder_bias", (bias,), "param")]

    def normalise(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Old checkpoints' LayerNorm gamma/beta renamed, the decoder bias found under its alias."""
        out = super().normalise({k.replace("LayerNorm.gamma", "LayerNorm.weight")
                                  .replace("LayerNorm.beta", "LayerNorm.bias"): v for k, v in tensors.items()})
        alias = self.head_names[2].replace(".bias", ".decoder.bias")
        if alias in out and self.head_names[2] not in out:
            out[self.head_names[2]] = out[alias]
        return out


class RobertaConverter(BertConverter):
    family, model_types, model_type = "roberta", ("roberta", "xlm-roberta"), "xlm-roberta"
    architecture, prefix = "XLMRobertaForMaskedLM", "roberta."
    head_names = ("lm_head.dense", "lm_head.layer_norm", "lm_head.bias")

    def position_offset(self, hf) -> int:
        return hf.pad_token_id + 1  # RoBERTa numbers positions after the padding id

    def check_activation(self, act: str | None, hf) -> None:
        if act != "gelu":  # RoBERTa's LM head is always exact GELU
            raise unsupported(self.family, "hidden_act", hf.hidden_act)

    def can_export(self, cfg: ModelConfig) -> bool:
        return cfg.arch == "bert" and bool(cfg.position_offset)

    def check_export(self, cfg: ModelConfig) -> None:
        if cfg.position_offset != cfg.pad_token_id + 1:
            raise XelmError(f"cannot export as {self.model_type}: position_offset {cfg.position_offset} "
                            f"must be pad_token_id + 1 = {cfg.pad_token_id + 1}")
        if cfg.activation != "gelu":
            raise XelmError(f"cannot export as {self.model_type}: its LM head is exact GELU, not {cfg.activation}")
