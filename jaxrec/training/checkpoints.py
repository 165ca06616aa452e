"""Checkpoints: the one module that imports Orbax.

A `Checkpointer` keeps the last N checkpoints of a train state plus a JSON
`meta` item (step, config fingerprint, data-iterator state, anything else a
resumed run needs). Restoring refuses a checkpoint written for another config.
"""

from __future__ import annotations

import os
import re
from typing import Any, Optional, Sequence

import jax
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
  """A checkpoint that cannot be used here; the message says why and what to do."""


class WorkdirError(CheckpointError):
  """The workdir holds another run; nothing was written."""


def check_run_dir(workdir: str, fingerprint: str, config_text: Optional[str] = None,
                  subdirs: Sequence[str] = ("checkpoints",), changeable_lines: str = "",
                  changeable_names: str = "") -> None:
  """Raises WorkdirError if `workdir` holds another run; reads only, writes nothing.

  Args:
    workdir: the run folder.
    fingerprint: this run's configuration fingerprint.
    config_text: this run's operative config; compared with `<workdir>/config.gin`
      (blank and comment lines, and lines matching `changeable_lines`, ignored).
    subdirs: checkpoint folders whose latest meta must carry `fingerprint`.
    changeable_lines: regex of config lines that may differ (e.g. step counts).
    changeable_names: how the error message names those lines.
  """
  def lines(text):
    return [l for l in text.splitlines() if l.strip() and not l.startswith("#") and
            not (changeable_lines and re.search(changeable_lines, l))]

  config_path = os.path.join(workdir, "config.gin")
  if config_text is not None and os.path.isfile(config_path):
    with open(config_path) as f:
      old = lines(f.read())
    new = lines(config_text)
    if old != new:
      diff = next((f"{a!r} vs {b!r}" for a, b in zip(old, new) if a != b),
                  "one config has more lines")
      allowed = f" (only {changeable_names} may change on resume)" if changeable_names else ""
      raise WorkdirError(f"{workdir} holds another run: its config.gin differs from this "
                         f"run's operative config (first difference: {diff}). Fix: use a "
                         f"new --workdir, or rerun with the same gin files and flags{allowed}.")
  for sub in subdirs:
    directory = os.path.join(workdir, sub)
    if not os.path.isdir(directory) or not os.listdir(directory):
      continue
    with Checkpointer(directory, fingerprint, async_save=False) as ckpt:
      old_fp = ckpt.read_meta().get("fingerprint") if ckpt.latest_step() is not None else None
    if old_fp is not None and old_fp != fingerprint:
      raise WorkdirError(f"{directory} holds checkpoints of another run (fingerprint "
                         f"{old_fp!r}, this run {fingerprint!r}). Fix: use a new --workdir "
                         f"for this configuration.")


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

  def all_steps(self) -> list:
    return sorted(self._manager.all_steps())

  def delete_after(self, step: int) -> None:
    """Deletes checkpoints of steps > `step` (left by a run killed after it saved them)."""
    for later in self.all_steps():
      if later > step:
        self._manager.delete(later)

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
