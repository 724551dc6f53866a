"""xelm: cross-lingual expert language models (X-ELM) in JAX."""

from xelm.errors import XelmError

__version__ = "0.1.0"
__all__ = ["XelmError", "__version__"]
