"""Checkpoints: the one module that imports Orbax.

A `Checkpointer` keeps the last N checkpoints of a train state plus a JSON
`meta` item (step, config fingerprint, data-iterator state, anything else a
resumed run needs). Restoring refuses a checkpoint written for another config.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
  """A checkpoint that cannot be used here; the message says why and what to do."""


class Checkpointer:
  """Keep-N Orbax checkpoints of (state, meta) under `directory`.

  Args:
    directory: e.g. `<workdir>/checkpoints`; created if missing.
    fingerprint: identifies the configuration; stored in every checkpoint and
      checked on restore.
    max_to_keep: checkpoints kept (oldest deleted first).
    save_interval_steps: `save` is a no-op for other steps unless forced.
    async_save: write in the background (call `wait()` before reading).
  """

  def __init__(self, directory: str, fingerprint: str, max_to_keep: int = 3,
               save_interval_steps: int = 1, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.fingerprint = fingerprint
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=save_interval_steps, create=True,
        enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "meta"))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: Optional[dict] = None, force: bool = False) -> bool:
    """Saves (state, meta) at `step` if the interval says so (or `force`)."""
    meta = dict(meta or {}, step=int(step), fingerprint=self.fingerprint)
    return self._manager.save(
        int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                           meta=ocp.args.JsonSave(meta)), force=force)

  def read_meta(self, step: Optional[int] = None) -> dict:
    step = self.latest_step() if step is None else step
    restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored.meta)

  def restore(self, target: Any, step: Optional[int] = None) -> tuple:
    """Restores (state, meta) into the structure/shardings of `target`.

    Args:
      target: a state pytree (arrays or jax.ShapeDtypeStruct with shardings)
        with the structure of the saved state.
      step: which step; default the latest.

    Raises:
      CheckpointError: no checkpoint, or one written for another configuration.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    meta = self.read_meta(step)
    if meta.get("fingerprint") != self.fingerprint:
      raise CheckpointError(
          f"the checkpoint {self.directory} step {step} was written for another "
          f"configuration (fingerprint {meta.get('fingerprint')!r}, this run "
          f"{self.fingerprint!r}). Fix: use a new workdir for this configuration, or "
          f"restore the configuration saved beside it (config.gin).")
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
        if hasattr(x, "shape") else x, target)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
    return restored.state, meta

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
