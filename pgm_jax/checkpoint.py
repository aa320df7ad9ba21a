"""Checkpointing: the only module that imports orbax.

A checkpoint step directory holds four items:
  params  raw training weights (pure dict),
  ema     EMA weights (what sampling and evaluation restore),
  opt     {step, opt_state, key} (absent in converted checkpoints),
  data    the data iterator's state (JSON), so a resumed run sees exactly the next batch.
Saves are asynchronous; restores take an abstract target whose leaves carry the *current*
mesh's shardings, so a checkpoint restores onto any mesh.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

ITEMS = ("params", "ema", "opt", "data")


class CheckpointError(RuntimeError):
    """A missing or unreadable checkpoint; the message names the directory and step."""


def abstract(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying `shardings` (a matching tree of NamedShardings)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


class Checkpointer:
    """Periodic, asynchronous checkpoints of a training run, keeping the last `keep`."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=not read_only, read_only=read_only,
            enable_async_checkpointing=async_save,
        )
        self._mgr = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mgr.all_steps())

    def save(self, step: int, *, params, ema, opt: dict | None = None,
             data: dict | None = None) -> None:
        """Starts an asynchronous save of `step` (returns once the arrays are copied)."""
        items = {"params": ocp.args.StandardSave(params), "ema": ocp.args.StandardSave(ema)}
        if opt is not None:
            items["opt"] = ocp.args.StandardSave(opt)
        if data is not None:
            items["data"] = ocp.args.JsonSave(data)
        self._mgr.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, step: int | None, targets: dict[str, Any]) -> dict[str, Any]:
        """Restores the named items at `step` (default latest) onto the targets' shardings.

        targets: item name -> abstract pytree (see `abstract`), or None for JSON items.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        if step not in self.all_steps():
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory} (have {self.all_steps()})"
            )
        args = {
            name: ocp.args.JsonRestore() if target is None else ocp.args.StandardRestore(target)
            for name, target in targets.items()
        }
        try:
            restored = self._mgr.restore(step, args=ocp.args.Composite(**args))
        except (FileNotFoundError, ValueError, KeyError, OSError) as e:
            raise CheckpointError(
                f"cannot restore step {step} from {self.directory}: {type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}"
            ) from e
        return {name: restored[name] for name in targets}

    def item_names(self, step: int) -> list[str]:
        """The items present in the checkpoint at `step`."""
        path = os.path.join(self.directory, str(step))
        return [n for n in ITEMS if os.path.isdir(os.path.join(path, n))]

    def wait(self) -> None:
        self._mgr.wait_until_finished()

    def close(self) -> None:
        self._mgr.wait_until_finished()
        self._mgr.close()
