"""xelm: cross-lingual expert language models (X-ELM) in JAX."""

import os

# transformers warns at import that PyTorch is absent; xelm uses only its tokenizers and configs.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from xelm.errors import XelmError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["XelmError", "__version__"]
