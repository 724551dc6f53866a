"""xelm: cross-lingual expert language models (X-ELM) in JAX."""

import os

# The one place the libraries' chatter is set: transformers warns at import that PyTorch is
# absent (xelm uses only its tokenizers and configs), XLA logs at start-up.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# On a GPU, cuBLAS runs this encoder's GEMMs faster than XLA's Triton GEMM fusions (one H200,
# ModernBERT-large shape: 183,493 against 175,877 tokens/s; benchmarks/README.md). XLA reads the
# flag when JAX first touches a device; a choice already in XLA_FLAGS wins. No effect on a CPU.
if "xla_gpu_enable_triton_gemm" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_gpu_enable_triton_gemm=false".strip()

from xelm.errors import XelmError  # noqa: E402
from xelm.hostmemory import keep_freed_memory  # noqa: E402

# Before JAX starts its threads: XLA:CPU's per-run temporaries stay mapped (xelm/hostmemory.py).
HOST_MEMORY_KEPT = keep_freed_memory()

__version__ = "0.1.0"
__all__ = ["XelmError", "__version__"]
