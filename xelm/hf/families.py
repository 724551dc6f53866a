"""The converters xelm knows, looked up by HF ``model_type`` (import) or by encoder config
(export)."""

from __future__ import annotations

from xelm.config import ModelConfig
from xelm.errors import XelmError
from xelm.hf.bert import BertConverter, RobertaConverter
from xelm.hf.converter import HFConverter
from xelm.hf.modernbert import ModernBertConverter

CONVERTERS: tuple[HFConverter, ...] = (BertConverter(), RobertaConverter(), ModernBertConverter())
MODEL_TYPES = {t: c for c in CONVERTERS for t in c.model_types}


def converter_for_hf(hf) -> HFConverter:
    """The converter for a transformers config (its ``model_type``)."""
    conv = MODEL_TYPES.get(hf.model_type)
    if conv is None:
        arch = ", ".join(getattr(hf, "architectures", None) or []) or "?"
        raise XelmError(f"architecture {arch} (model_type {hf.model_type!r}) is not supported: xelm imports "
                        f"{', '.join(sorted(MODEL_TYPES))}")
    return conv


def converter_for(cfg: ModelConfig) -> HFConverter:
    """The family an xelm encoder exports as."""
    return next(c for c in CONVERTERS if c.can_export(cfg))
