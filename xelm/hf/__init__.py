"""Hugging Face interoperability: one converter per model family (BERT, RoBERTa / XLM-R,
ModernBERT) between transformers checkpoints and xelm's ``Encoder``, both ways.

transformers 5 has no Flax classes, so checkpoints are read and written as numpy arrays
(safetensors) and renamed by each family's converter. ``converter`` holds the shared
machinery, ``bert`` / ``modernbert`` the families, ``io`` the files, ``hub`` Hub ids,
``runs`` the run-directory side (import as a base, ``--model PATH``).
"""

from xelm.hf.bert import BertConverter, RobertaConverter
from xelm.hf.card import model_card
from xelm.hf.converter import HFConverter
from xelm.hf.families import CONVERTERS, MODEL_TYPES, converter_for, converter_for_hf
from xelm.hf.hub import resolve_model
from xelm.hf.io import MASK, check_export_dir, export_hf, export_tokenizer, is_export, is_hf_dir, load_hf, read_tensors
from xelm.hf.modernbert import ModernBertConverter
from xelm.hf.runs import import_hf, load_any_model

__all__ = ["BertConverter", "CONVERTERS", "HFConverter", "MASK", "MODEL_TYPES", "ModernBertConverter",
           "RobertaConverter", "check_export_dir", "converter_for", "converter_for_hf", "export_hf",
           "export_tokenizer", "import_hf", "is_export", "is_hf_dir", "load_any_model", "load_hf", "model_card",
           "read_tensors", "resolve_model"]
