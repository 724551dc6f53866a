"""Model-only weights on disk (Orbax) with a checksum, and the model config beside them.

Experts, the base's final weights and the dense baseline are all saved this way, so any of
them loads into an ``Encoder`` the same way, and damage is detected by checksum.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from xelm.checkpoint import restore_into
from xelm.config import ModelConfig, from_dict, to_dict
from xelm.errors import XelmError
from xelm.faults import ours
from xelm.files import read_json, write_json
from xelm.model import Encoder


def _path(directory: str | Path) -> epath.Path:
    """Local paths made absolute (Orbax needs that); gs://, s3:// ... as they are."""
    return epath.Path(directory if "://" in str(directory) else Path(directory).absolute())


def checksum(model: nnx.Module) -> str:
    """sha256 over every parameter's path, shape, dtype and bytes, in a fixed order."""
    h = hashlib.sha256()
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    for path, var in sorted(flat, key=lambda kv: tuple(map(str, kv[0]))):
        arr = np.asarray(jax.device_get(var.get_value() if hasattr(var, "get_value") else var.value))
        h.update("/".join(map(str, path)).encode())
        h.update(f"{arr.shape}{arr.dtype}".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def save_weights(model: Encoder, directory: str | Path) -> str:
    """Write ``directory/params`` (Orbax) and ``directory/model.json``; return the checksum."""
    directory = _path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ours(directory)  # a failed save's temporary folder is cleaned
    digest = checksum(model)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / "params", nnx.to_pure_dict(nnx.state(model, nnx.Param)), force=True)
    write_json(directory / "model.json", {"model": to_dict(model.cfg), "checksum": digest})
    return digest


def load_model_config(directory: str | Path) -> tuple[ModelConfig, str]:
    meta_path = _path(directory) / "model.json"
    if not meta_path.is_file():
        raise XelmError(f"no model weights at {directory} (missing model.json)")
    meta = read_json(meta_path, "model config", "restore it from a copy or train the model again")
    try:
        return from_dict(meta["model"], ModelConfig), meta["checksum"]
    except (KeyError, TypeError, AttributeError) as e:
        raise XelmError(f"{meta_path} is damaged ({type(e).__name__}: {e})") from None


@functools.lru_cache(maxsize=8)
def _abstract_encoder(cfg: ModelConfig):  # a frozen dataclass: equal configs hash alike
    return nnx.split(nnx.eval_shape(lambda: Encoder(cfg, rngs=nnx.Rngs(0))))


def abstract_encoder(cfg: ModelConfig):
    """(graphdef, a fresh abstract state: shapes only) of an encoder of ``cfg``. Tracing the
    constructor is most of the cost of loading a small expert, so it runs once per config, not
    once per expert loaded (a run's experts share one)."""
    graphdef, abstract = _abstract_encoder(cfg)
    return graphdef, jax.tree.map(lambda leaf: leaf, abstract)  # restoring fills the state in place


def load_weights(directory: str | Path, *, name: str | None = None, expected: str | None = None) -> Encoder:
    """The encoder saved at ``directory``, read into an abstract model (nothing initialised)
    and its checksum verified once: against ``model.json`` and, if given, ``expected`` (e.g. a
    registry card's). A damaged or missing file is an error naming ``name`` and the path."""
    label = f"{name} ({directory})" if name else str(directory)
    fix = "; re-create them or remove the entry"
    cfg, saved = load_model_config(directory)
    graphdef, abstract = abstract_encoder(cfg)

    def read(target):
        with ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore(_path(directory) / "params", target)
    model = nnx.merge(graphdef, restore_into(abstract, read, f"weights of {label}", fix))
    digest = checksum(model)
    if digest != saved or (expected is not None and digest != expected):
        raise XelmError(f"weights of {label} are damaged: checksum mismatch{fix}")
    return model
