"""xelm: cross-lingual expert language models (X-ELM) in JAX."""

import os

# The one place the libraries' chatter is set: transformers warns at import that PyTorch is
# absent (xelm uses only its tokenizers and configs), XLA logs at start-up.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from xelm.errors import XelmError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["XelmError", "__version__"]
