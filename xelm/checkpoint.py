"""Orbax checkpoints of an NNX state plus JSON metadata (step, data position, token counts)."""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx

from xelm.errors import XelmError


class Checkpointer:
    """Async, keep-last-N checkpoints under ``directory``; a step's save is atomic (Orbax
    writes to a temporary folder and renames it when complete)."""

    def __init__(self, directory: str | Path, keep: int = 2):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: nnx.State, meta: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(nnx.to_pure_dict(state)), meta=ocp.args.JsonSave(meta)))

    def restore(self, abstract_state: nnx.State, step: int | None = None) -> tuple[nnx.State, dict]:
        """Fill ``abstract_state`` (its shapes and shardings) from the checkpoint at ``step``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise XelmError(f"no checkpoint in {self.directory}")
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.to_pure_dict(abstract_state))
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        except Exception as e:  # Orbax raises many kinds for damaged or mismatched files
            raise XelmError(f"checkpoint {self.directory / str(step)} cannot be restored "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        nnx.replace_by_pure_dict(abstract_state, restored["state"])
        return abstract_state, dict(restored["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
