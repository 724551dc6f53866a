"""Orbax checkpoints of an NNX state plus JSON metadata (step, data position, token counts), and
the one way any saved state is read back: into an abstract state (shapes only)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx

from xelm.errors import XelmError
from xelm.faults import ours


def restore_into(abstract_state: nnx.State, read: Callable[[dict], dict], what: str, fix: str = "",
                 sharding: jax.sharding.Sharding | None = None) -> nnx.State:
    """``abstract_state`` (``jax.ShapeDtypeStruct`` leaves, e.g. from ``nnx.eval_shape``) filled
    by ``read(target)``, an Orbax restore of a pure dict; every leaf lands on ``sharding`` (or the
    first local device). A damaged or mismatched file is one line naming ``what`` and ``fix``."""
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          nnx.to_pure_dict(abstract_state))
    try:
        restored = read(target)
    except Exception as e:  # Orbax raises many kinds for missing, damaged or mismatched files
        raise XelmError(f"{what} cannot be restored ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]}){fix}") from None
    nnx.replace_by_pure_dict(abstract_state, restored)
    return abstract_state


class Checkpointer:
    """Async, keep-last-N checkpoints under ``directory``; a step's save is atomic (Orbax
    writes to a temporary folder and renames it when complete)."""

    def __init__(self, directory: str | Path, keep: int = 2):
        self.directory = ours(Path(directory).absolute())  # a failed save's temporary folder is cleaned
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: nnx.State, meta: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(nnx.to_pure_dict(state)), meta=ocp.args.JsonSave(meta)))

    def restore(self, abstract_state: nnx.State, step: int | None = None,
                sharding: jax.sharding.Sharding | None = None) -> tuple[nnx.State, dict]:
        """``abstract_state`` filled from the checkpoint at ``step`` (default: the latest), and
        that step's metadata."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise XelmError(f"no checkpoint in {self.directory}")
        meta = {}

        def read(target):
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
            meta.update(restored["meta"])
            return restored["state"]
        state = restore_into(abstract_state, read, f"checkpoint {self.directory / str(step)}", sharding=sharding)
        return state, meta

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
