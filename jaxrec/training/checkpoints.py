"""Checkpoints: the one module that imports Orbax.

A `Checkpointer` keeps the last N checkpoints of a train state plus a JSON
`meta` item (step, config fingerprint, data-iterator state, a checksum of the
state's bits, anything else a resumed run needs). Restoring refuses a checkpoint
written for another config; a damaged one (unreadable metadata or arrays, an empty
step folder, arrays whose bits disagree with the checksum) is moved aside to
`<directory>/corrupt-<step>` and the next older one is restored; when none is
readable nothing is moved and `UnreadableCheckpointError` lists every step tried.
`workdir_lock` keeps a second process out of a workdir in use. The damage table
(case -> what happens, and the test of each row): docs/checkpoints.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import warnings
from typing import Any, Callable, Iterator, Optional, Sequence

import filelock
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jaxrec import files
from jaxrec import fingerprints


class CheckpointError(ValueError):
  """A checkpoint that cannot be used here; the message says why and what to do."""


class WorkdirError(CheckpointError):
  """The workdir holds another run, or another process is using it; nothing was written."""


class UnreadableCheckpointError(CheckpointError):
  """No checkpoint of a folder can be read completely; the message lists each step tried,
  what was wrong with it, and the fix. Nothing was moved or deleted."""


class CheckpointDamageWarning(files.DamagedFileWarning):
  """A damaged checkpoint was moved aside (or a damaged metrics line dropped)."""


_CORRUPT_PREFIX = "corrupt-"


@contextlib.contextmanager
def workdir_lock(workdir: str, what: str = "run", name: str = ".lock") -> Iterator[str]:
  """Holds `<workdir>/<name>` (an OS file lock, released when the process ends however it
  ends) for the duration; yields the lock path.

  Only process 0 of a multi-process run locks (the others write no files of their own).

  Raises:
    WorkdirError: another process holds the lock.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, name)
  if jax.process_index() != 0:
    yield path
    return
  lock = filelock.FileLock(path)
  try:
    lock.acquire(timeout=0)
  except filelock.Timeout:
    raise WorkdirError(
        f"{workdir} is in use: another process is running a {what} in it (it holds the lock "
        f"{path}). Fix: wait for it to finish or stop it, or use another --workdir. (A "
        f"crashed process does not keep the lock.)") from None
  try:
    yield path
  finally:
    lock.release()


_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def _leaf_bits_sum(x):
  """Sum of the leaf's bits read as unsigned integers, modulo 2**32 (exact, so the same
  for any sharding and reduction order)."""
  x = jnp.asarray(x)
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  width = x.dtype.itemsize
  if width == 8:  # 64-bit leaves (jax_enable_x64): both 32-bit halves.
    x = jax.lax.bitcast_convert_type(x, jnp.uint32)
  else:
    x = jax.lax.bitcast_convert_type(x, _UINT[width])
  return jnp.sum(x.astype(jnp.uint32), dtype=jnp.uint32)


_bits_sums = jax.jit(lambda tree: jax.tree.map(_leaf_bits_sum, tree))


def state_checksum(tree: Any) -> int:
  """An exact checksum of a pytree's array bits (any single flipped bit changes it).

  Each leaf's bits are summed as unsigned integers modulo 2**32 on device (one jitted
  program, sharded leaves reduce in place), and the leaf sums are combined on the host
  weighted by leaf position.
  """
  arrays = [x for x in jax.tree.leaves(tree) if hasattr(x, "dtype")]
  sums = jax.device_get(_bits_sums(arrays))
  return int(sum(int(v) * (2 * i + 1) for i, v in enumerate(sums)) % (1 << 32))


def _meta_digest(meta: dict) -> str:
  """sha256 of the meta's JSON (without its own digest)."""
  body = {k: v for k, v in meta.items() if k != "meta_digest"}
  return fingerprints.digest(body)


def _describe(error: BaseException) -> str:
  text = " ".join(str(error).split())
  return f"{type(error).__name__}: {text[:300]}"


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
      newest = ckpt.newest_readable_meta()  # damaged ones are the restore's business
      old_fp = newest[1].get("fingerprint") if newest is not None else None
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
    self._options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=save_interval_steps, create=True,
        enable_async_checkpointing=async_save)
    self._manager = self._open()

  def _open(self):
    return ocp.CheckpointManager(self.directory, options=self._options,
                                 item_names=("state", "meta"))

  def _reopen(self) -> None:
    """A fresh manager (after a failed read, which can leave Orbax's one broken, or after
    a step folder was moved)."""
    try:
      self._manager.close()
    except Exception:  # a manager broken by the failed read; the new one replaces it.
      pass
    self._manager = self._open()

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
    """Saves (state, meta) at `step` if the interval says so (or `force`); the meta carries
    `state_checksum(state)`, checked on restore."""
    if not (force or self._manager.should_save(int(step))):
      return False
    meta = json.loads(json.dumps(dict(meta or {}, step=int(step), fingerprint=self.fingerprint,
                                      checksum=state_checksum(state))))
    meta["meta_digest"] = _meta_digest(meta)
    return self._manager.save(
        int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                           meta=ocp.args.JsonSave(meta)), force=force)

  def read_meta(self, step: Optional[int] = None) -> dict:
    """The meta of `step` (default the latest); raises whatever Orbax / json raise for a
    damaged one (`newest_readable_meta` does not)."""
    step = self.latest_step() if step is None else step
    if not isinstance(step, int):
      raise CheckpointError(f"no checkpoint in {self.directory}")
    restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    if restored.meta is None:
      raise CheckpointError(f"{self.directory}/{step} has no meta item")
    return dict(restored.meta)

  def newest_readable_meta(self) -> Optional[tuple]:
    """(step, meta) of the newest checkpoint whose meta reads, or None; moves nothing."""
    for step in reversed(self.all_steps()):
      try:
        return step, self.read_meta(step)
      except Exception:  # damaged: skipped here, reported by restore.
        self._reopen()
    return None

  def _restore_step(self, abstract: Any, step: int) -> tuple:
    try:
      meta = self.read_meta(step)
    except Exception as e:
      raise _Damaged(f"its metadata does not read ({_describe(e)})") from e
    if "meta_digest" in meta and _meta_digest(meta) != meta["meta_digest"]:
      raise _Damaged("its metadata reads but differs from what was saved (digest mismatch: "
                     "changed bytes)")
    if "fingerprint" not in meta or meta.get("step") not in (None, step):
      raise _Damaged(f"its metadata lacks the fingerprint or names another step "
                     f"({meta.get('step')!r})")
    if meta.get("fingerprint") != self.fingerprint:
      raise CheckpointError(
          f"the checkpoint {self.directory} step {step} was written for another "
          f"configuration (fingerprint {meta.get('fingerprint')!r}, this run "
          f"{self.fingerprint!r}). Fix: use a new workdir for this configuration, or "
          f"restore the configuration saved beside it (config.gin).")
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))
    except Exception as e:
      raise _Damaged(f"its arrays do not read ({_describe(e)})") from e
    if "checksum" in meta:
      got = state_checksum(restored.state)
      if got != meta["checksum"]:
        raise _Damaged(f"its arrays read but their checksum is {got}, the metadata says "
                       f"{meta['checksum']} (changed bytes)")
    return restored.state, meta

  def _move_aside(self, step: int) -> str:
    """Moves `<directory>/<step>` to `<directory>/corrupt-<step>[-n]`; returns the new path."""
    source = os.path.join(self.directory, str(step))
    dest, n = os.path.join(self.directory, f"{_CORRUPT_PREFIX}{step}"), 1
    while os.path.exists(dest):
      dest, n = os.path.join(self.directory, f"{_CORRUPT_PREFIX}{step}-{n}"), n + 1
    if jax.process_index() == 0:
      shutil.move(source, dest)
    return dest

  def restore(self, target: Any, step: Optional[int] = None) -> tuple:
    """Restores (state, meta) into the structure/shardings of `target`.

    With `step` None, the newest checkpoint that reads completely (metadata, arrays, and
    the arrays' checksum): each newer, damaged one is moved aside to
    `<directory>/corrupt-<step>` (never deleted) with a `CheckpointDamageWarning` naming
    the path, the step and what is wrong. When none reads, nothing is moved.

    Args:
      target: a state pytree (arrays or jax.ShapeDtypeStruct with shardings)
        with the structure of the saved state.
      step: which step; default the newest readable.

    Raises:
      CheckpointError: no checkpoint, or one written for another configuration.
      UnreadableCheckpointError: no checkpoint (or the given `step`) reads completely.
    """
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
        if hasattr(x, "shape") else x, target)
    steps = self.all_steps() if step is None else [step]
    if not steps:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    problems = []
    for s in reversed(steps):
      try:
        result = self._restore_step(abstract, s)
      except _Damaged as e:
        problems.append((s, str(e)))
        self._reopen()
        continue
      for bad, reason in problems:  # only once a readable one was found.
        moved = self._move_aside(bad)
        warnings.warn(f"checkpoint {self.directory}/{bad} (step {bad}) is damaged: {reason}. "
                      f"Moved it aside to {moved}; resuming from step {s}.",
                      CheckpointDamageWarning, stacklevel=2)
      if problems:
        self._reopen()
      return result
    tried = "; ".join(f"step {s}: {reason}" for s, reason in problems)
    raise UnreadableCheckpointError(
        f"no checkpoint in {self.directory} can be read ({tried}). Nothing was moved or "
        f"deleted. Fix: use another --workdir, or move {self.directory} aside to restart "
        f"this run from step 0.")

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def restore_first(workdir: str, fingerprint: str, subdirs: Sequence[str],
                  target: Callable[[str], Any]) -> tuple:
  """(state, meta, subdir) from the first of `subdirs` (e.g. ("best", "checkpoints")) that
  holds a readable checkpoint; a folder whose every checkpoint is damaged is passed over
  with a `CheckpointDamageWarning` (so a damaged `best` falls back to the latest).

  Args:
    workdir: the run folder.
    fingerprint: the run's fingerprint (another run's checkpoint is still refused).
    subdirs: the folders to try, in order.
    target: subdir -> the restore target (state or shapes) of that folder.

  Raises:
    CheckpointError: none of them holds a readable checkpoint (the message says which
      were damaged and how).
  """
  damaged = []
  for sub in subdirs:
    directory = os.path.join(workdir, sub)
    if not os.path.isdir(directory):
      continue
    with Checkpointer(directory, fingerprint, async_save=False) as ckpt:
      if ckpt.latest_step() is None:
        continue
      try:
        state, meta = ckpt.restore(target(sub))
      except UnreadableCheckpointError as e:
        damaged.append(str(e))
        warnings.warn(f"{e} Trying the next of {list(subdirs)}.", CheckpointDamageWarning,
                      stacklevel=2)
        continue
      return state, meta, sub
  folders = ",".join(subdirs)
  raise (UnreadableCheckpointError if damaged else CheckpointError)(
      f"no {'readable ' if damaged else ''}checkpoint in {workdir}/{{{folders}}}"
      + (f" ({' '.join(damaged)})" if damaged else "")
      + ". Fix: train first with this --workdir and the same gin config"
      + (", after moving the damaged folders aside." if damaged else "."))


class _Damaged(Exception):
  """A checkpoint step that does not read completely (the message says what is wrong)."""
