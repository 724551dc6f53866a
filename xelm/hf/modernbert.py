"""ModernBERT (and mmBERT): RoPE, pre-norm, GeGLU, alternating local / global attention,
optionally no biases -- xelm's own default architecture."""

from __future__ import annotations

from xelm.config import ModelConfig
from xelm.hf.converter import TO_HF_ACT, TO_XELM_ACT, HFConverter, Row, unsupported


class ModernBertConverter(HFConverter):
    family, model_types, model_type = "modernbert", ("modernbert",), "modernbert"
    architecture, prefix = "ModernBertForMaskedLM", "model."
    zero_fill = False  # ModernBERT has a switch for biases: absent ones stay absent

    def config_from_hf(self, hf) -> ModelConfig:
        f = self.family
        if not getattr(hf, "tie_word_embeddings", True):
            raise unsupported(f, "tie_word_embeddings", False, "xelm ties the decoder to the embeddings")
        if not hf.attention_bias == hf.mlp_bias == hf.norm_bias:
            raise unsupported(f, "attention_bias/mlp_bias/norm_bias", (hf.attention_bias, hf.mlp_bias, hf.norm_bias),
                              "xelm has one switch for all three")
        if hf.attention_bias and not hf.classifier_bias:
            raise unsupported(f, "classifier_bias", False, "with attention_bias=True")
        if hf.classifier_activation != hf.hidden_activation or hf.hidden_activation not in TO_XELM_ACT:
            raise unsupported(f, "hidden_activation/classifier_activation",
                              (hf.hidden_activation, hf.classifier_activation))
        rope = hf.rope_parameters
        for kind in ("full_attention", "sliding_attention"):
            if rope[kind].get("rope_type", "default") != "default":
                raise unsupported(f, f"rope_parameters.{kind}.rope_type", rope[kind]["rope_type"])
        is_global = [t == "full_attention" for t in hf.layer_types]
        every = next((i for i in range(1, len(is_global)) if is_global[i]), len(is_global))  # the period
        if not is_global[0] or is_global != [i % every == 0 for i in range(len(is_global))]:
            raise unsupported(f, "layer_types", hf.layer_types, "xelm makes layer i global when i % global_every == 0")
        return ModelConfig(
            arch="modernbert", vocab_size=hf.vocab_size, hidden=hf.hidden_size, layers=hf.num_hidden_layers,
            heads=hf.num_attention_heads, ffn=hf.intermediate_size, max_len=hf.max_position_embeddings,
            local_window=0 if all(is_global) else hf.local_attention, global_every=every,
            rope_theta=float(rope["full_attention"]["rope_theta"]),
            rope_theta_local=float(rope["sliding_attention"]["rope_theta"]), norm_eps=hf.norm_eps,
            bias=hf.attention_bias, decoder_bias=hf.decoder_bias, head_bias=hf.classifier_bias,
            activation=TO_XELM_ACT[hf.hidden_activation], pad_token_id=hf.pad_token_id or 0,
            init_std=hf.initializer_range)

    def can_export(self, cfg: ModelConfig) -> bool:
        return cfg.arch == "modernbert"

    def config_to_hf(self, cfg: ModelConfig, tok) -> dict:
        cls = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
        sep = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        act = TO_HF_ACT[cfg.activation]
        return {**self._common_hf(cfg), "cls_token_id": cls, "bos_token_id": cls, "sep_token_id": sep,
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

    def table(self, cfg: ModelConfig) -> list[Row]:
        p = self.prefix
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
