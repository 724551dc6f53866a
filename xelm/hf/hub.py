"""A model named on the command line: a local directory, or a Hugging Face Hub id downloaded
through ``huggingface_hub`` into its usual cache (as transformers does). Offline, the error
says so and how to point at a local copy."""

from __future__ import annotations

import re
from pathlib import Path

from xelm.errors import XelmError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
# What a masked LM needs; never pytorch_model.bin (a pickle) from the network.
HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer*", "special_tokens_map.json",
             "added_tokens.json", "vocab.*", "merges.txt", "*.model"]


def resolve_model(spec: str | Path) -> Path:
    """The local directory for ``spec``: the path itself, or a Hub id's cached download."""
    path = Path(spec)
    if path.exists() or not HUB_ID.match(str(spec)):
        if not path.exists():
            raise XelmError(f"model path {spec} does not exist")
        return path
    return download(str(spec))


def download(repo_id: str) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    local = f"download it where there is network (`hf download {repo_id} --local-dir DIR`) and give DIR"
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except GatedRepoError:
        raise XelmError(f"{repo_id} on the Hugging Face Hub is gated: accept its terms and log in "
                        "(`hf auth login`), or give a local copy") from None
    except RepositoryNotFoundError:
        raise XelmError(f"{repo_id} is neither a local directory nor a model on the Hugging Face Hub: "
                        "check the path or the id") from None
    except Exception as e:  # offline, no network, a proxy: the cache is all there is
        why = ("this machine is offline (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else
               f"the download failed ({type(e).__name__})")
        raise XelmError(f"{repo_id} is not a local directory, and as a Hugging Face Hub id it cannot be "
                        f"fetched: {why} and it is not in the cache; {local}") from None
