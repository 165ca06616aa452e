"""Damaged checkpoints and workdirs: every row of the damage table in docs/checkpoints.md.

A damaged newest checkpoint is moved aside (`corrupt-<step>`) and the run resumes from the
newest readable one, exactly; when none reads, one UnreadableCheckpointError names the folder,
every step tried and the fix, and nothing is moved. A truncated metrics.jsonl line is dropped
with a warning; a damaged `best` falls back to the latest; a second process is refused.
"""

import glob
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import files
from jaxrec.data import batching
from jaxrec.training import checkpoints
from jaxrec.training import optimizers
from jaxrec.training import trainer as trainer_lib

_path = pathlib.Path(__file__).with_name("multihost_worker.py")
_spec = importlib.util.spec_from_file_location("multihost_worker", _path)
w = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(w)

# File kinds of one Orbax checkpoint step folder (glob patterns inside <step>/).
KINDS = {
    "meta": "meta/metadata",  # JSON: step, fingerprint, data-iterator state, checksums.
    "arrays": "state/**/d/*",  # the array chunks (zstd), per process and merged.
    "array index": "state/manifest.ocdbt",
    "array metadata": "state/_METADATA",
    "checkpoint metadata": "_CHECKPOINT_METADATA",
    "commit marker": "commit_success.txt",
}
DAMAGES = ("truncate", "corrupt", "delete", "flip one bit")
# (kind, damage) -> what a restore does: "older" (the damaged step is moved aside and the
# previous step restored) or "newest" (Orbax does not need that file: the newest restores,
# its arrays verified by the checksum). Every other pair: "older".
NEWEST = {("array metadata", "delete")} | {
    (kind, damage) for kind in ("checkpoint metadata", "commit marker") for damage in DAMAGES}


def damage(path, how):
  data = bytearray(open(path, "rb").read())
  if how == "truncate":
    data = data[:len(data) // 2]
  elif how == "corrupt":
    for i in range(len(data) // 3, min(len(data), len(data) // 3 + 4)):
      data[i] ^= 0xFF
  elif how == "flip one bit":
    data[len(data) // 2] ^= 1
  elif how == "delete":
    os.remove(path)
    return
  open(path, "wb").write(bytes(data))


def damage_step(directory, step, kind, how):
  paths = sorted(glob.glob(os.path.join(directory, str(step), KINDS[kind]), recursive=True))
  assert paths, (kind, os.listdir(os.path.join(directory, str(step))))
  if how == "flip one bit":  # one bit of one file: the subtlest damage.
    paths = [max(paths, key=os.path.getsize)]
  for path in paths:
    damage(path, how)


def empty_step(directory, step):
  folder = os.path.join(directory, str(step))
  for name in os.listdir(folder):
    full = os.path.join(folder, name)
    shutil.rmtree(full) if os.path.isdir(full) else os.remove(full)


STATE = {"w": jnp.arange(600.0).reshape(20, 30), "b": jnp.ones(7, jnp.bfloat16),
         "n": jnp.arange(3, dtype=jnp.int32)}


def _two_checkpoints(directory):
  with checkpoints.Checkpointer(directory, "fp", async_save=False) as ckpt:
    ckpt.save(1, STATE, {"data_state": {"position": 1}}, force=True)
    ckpt.save(2, jax.tree.map(lambda x: x * 2, STATE), {"data_state": {"position": 2}},
              force=True)


def _restore(directory):
  with checkpoints.Checkpointer(directory, "fp", async_save=False) as ckpt:
    return ckpt.restore(STATE)


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_damage_table_newest_checkpoint(tmp_path, kind, how):
  directory = str(tmp_path / "checkpoints")
  _two_checkpoints(directory)
  damage_step(directory, 2, kind, how)
  if (kind, how) in NEWEST:
    state, meta = _restore(directory)
    assert meta["step"] == 2 and meta["data_state"] == {"position": 2}
    np.testing.assert_array_equal(state["w"], 2 * np.asarray(STATE["w"]))
    assert sorted(os.listdir(directory)) == ["1", "2"]
    return
  with pytest.warns(checkpoints.CheckpointDamageWarning,
                    match=rf"{directory}/2 \(step 2\) is damaged: .*Moved it aside to "
                          rf"{directory}/corrupt-2; resuming from step 1"):
    state, meta = _restore(directory)
  assert meta["step"] == 1 and meta["data_state"] == {"position": 1}
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), jax.device_get(STATE))
  assert sorted(os.listdir(directory)) == ["1", "corrupt-2"]  # moved, not deleted
  with checkpoints.Checkpointer(directory, "fp", async_save=False) as ckpt:
    assert ckpt.all_steps() == [1]  # Orbax ignores the corrupt-<step> folder.


def test_damage_table_empty_step_folder(tmp_path):
  # What a crash in the middle of a non-atomic copy leaves.
  directory = str(tmp_path / "checkpoints")
  _two_checkpoints(directory)
  empty_step(directory, 2)
  with pytest.warns(checkpoints.CheckpointDamageWarning, match="step 2"):
    assert _restore(directory)[1]["step"] == 1


@pytest.mark.parametrize("kind", ["meta", "arrays"])
def test_damage_table_every_checkpoint_damaged(tmp_path, kind):
  directory = str(tmp_path / "checkpoints")
  _two_checkpoints(directory)
  for step in (1, 2):
    damage_step(directory, step, kind, "truncate")
  with pytest.raises(checkpoints.UnreadableCheckpointError) as e:
    _restore(directory)
  message = str(e.value)
  assert f"no checkpoint in {directory} can be read" in message
  assert "step 2: its " in message and "step 1: its " in message
  assert "Nothing was moved" in message and "--workdir" in message
  assert sorted(os.listdir(directory)) == ["1", "2"]  # nothing moved


def test_checksum_is_exact_and_sharding_independent():
  mesh = jax.make_mesh((8,), ("data",))
  x = np.arange(64, dtype=np.float32).reshape(8, 8)
  sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  assert checkpoints.state_checksum({"x": sharded}) == checkpoints.state_checksum({"x": x})
  y = x.copy()
  y.view(np.uint32)[3, 3] ^= 1  # the lowest mantissa bit of one value
  assert checkpoints.state_checksum({"x": y}) != checkpoints.state_checksum({"x": x})
  # Leaf order matters (two leaves swapped is another state).
  assert (checkpoints.state_checksum([x, 2 * x]) != checkpoints.state_checksum([2 * x, x]))


def test_interrupted_async_save_is_never_taken_for_complete(tmp_path):
  # A process killed while an async save is in flight: Orbax writes into a temporary folder
  # and renames it when complete, so the resume sees only the last finished step.
  directory = str(tmp_path / "checkpoints")
  script = textwrap.dedent(f"""
      import os, jax.numpy as jnp
      from jaxrec.training import checkpoints
      ckpt = checkpoints.Checkpointer({directory!r}, "fp", async_save=True)
      ckpt.save(1, {{"w": jnp.ones((4, 4))}}, force=True)
      ckpt.wait()
      ckpt.save(2, {{"w": jnp.zeros((2048, 2048))}}, force=True)
      os._exit(0)  # killed before the save of step 2 is committed
  """)
  subprocess.run([sys.executable, "-c", script], check=True, timeout=300,
                 env={**os.environ, "JAX_PLATFORMS": "cpu"})
  with checkpoints.Checkpointer(directory, "fp", async_save=False) as ckpt:
    assert ckpt.all_steps() == [1]
    state, meta = ckpt.restore({"w": jnp.zeros((4, 4))})
  assert meta["step"] == 1 and float(state["w"].sum()) == 16.0


def test_truncated_metrics_line_is_dropped_with_a_warning(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
  with pytest.warns(files.DamagedFileWarning, match=rf"{path} line 2 is not JSON"):
    assert files.read_jsonl(str(path)) == [{"step": 1, "loss": 2.0}]


# ------------------------------------------------------------------ the trainer, end to end

CONFIG = trainer_lib.TrainerConfig(
    num_steps=6, eval_every=0, checkpoint_every=2, log_every=1, max_history=6, seed=0,
    keep_checkpoints=3,
    batching=batching.BatchingConfig(batch_size=8, seed=1, num_threads=0, prefetch=0),
    optimizer=optimizers.OptimizerConfig(name="adamw", schedule="constant",
                                         learning_rate=0.01))


@pytest.fixture(scope="module")
def split():
  return w.make_split()


def _train(split, workdir, **kwargs):
  return trainer_lib.train(w.StandInModel(), split, w.make_batch_fn(), CONFIG, str(workdir),
                           progress=False, **kwargs)


def _losses(workdir):
  return {e["step"]: e["loss"] for e in files.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if "loss" in e and "event" not in e}


@pytest.fixture(scope="module")
def whole(split, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("whole") / "run"
  _train(split, workdir)
  return _losses(workdir)


@pytest.mark.parametrize("case", ["meta truncated", "arrays corrupt", "empty folder",
                                  "metrics line truncated"])
def test_trainer_resumes_from_the_newest_good_step_exactly(split, whole, tmp_path, case):
  workdir = tmp_path / "run"
  directory = str(workdir / "checkpoints")

  def kill_at_5(step, state):
    if step == 5:
      raise KeyboardInterrupt("simulated kill after the step-4 checkpoint")

  with pytest.raises(KeyboardInterrupt):
    _train(split, workdir, on_step=kill_at_5)
  assert sorted(os.listdir(directory)) == ["2", "4"]
  if case == "metrics line truncated":
    with open(workdir / "metrics.jsonl", "a") as f:
      f.write('{"step": 5, "lo')  # a crash in the middle of a write
    with pytest.warns(files.DamagedFileWarning, match="metrics.jsonl line"):
      _train(split, workdir)
    expected_dirs = ["2", "4", "6"]
  else:
    if case == "meta truncated":
      damage_step(directory, 4, "meta", "truncate")
    elif case == "arrays corrupt":
      damage_step(directory, 4, "arrays", "corrupt")
    else:
      empty_step(directory, 4)
    with pytest.warns(checkpoints.CheckpointDamageWarning, match="resuming from step 2"):
      summary = _train(split, workdir)
    assert summary["step"] == 6
    expected_dirs = ["2", "4", "6", "corrupt-4"]
  assert sorted(os.listdir(directory)) == expected_dirs
  resumed = _losses(workdir)
  assert sorted(resumed) == list(range(1, 7))
  np.testing.assert_allclose([resumed[s] for s in range(1, 7)],
                             [whole[s] for s in range(1, 7)], rtol=1e-6)


def test_trainer_with_no_readable_checkpoint_names_the_workdir_and_the_fix(split, tmp_path):
  workdir = tmp_path / "run"
  _train(split, workdir)
  directory = str(workdir / "checkpoints")
  for step in (2, 4, 6):
    damage_step(directory, step, "meta", "truncate")
  with pytest.raises(checkpoints.UnreadableCheckpointError,
                     match=rf"no checkpoint in {directory} can be read \(step 6: .*step 4: .*"
                           rf"step 2: .*move {directory} aside to restart"):
    _train(split, workdir)
  assert sorted(os.listdir(directory)) == ["2", "4", "6"]


def test_damaged_best_falls_back_to_the_latest(split, tmp_path):
  workdir = tmp_path / "run"
  _train(split, workdir)
  with checkpoints.Checkpointer(str(workdir / "checkpoints"), "", async_save=False) as ckpt:
    fp = ckpt.read_meta()["fingerprint"]
    latest = ckpt.latest_step()
  tr = trainer_lib.Trainer(w.StandInModel(), CONFIG,
                           trainer_lib.input_shapes(split, w.make_batch_fn(), CONFIG,
                                                    split.train_examples(6)))
  with checkpoints.Checkpointer(str(workdir / "best"), fp, async_save=False) as best:
    best.save(2, tr.init_state(), force=True)
  damage_step(str(workdir / "best"), 2, "arrays", "truncate")
  with pytest.warns(checkpoints.CheckpointDamageWarning, match="Trying the next"):
    _, meta = trainer_lib.restore_state(tr, str(workdir), fp, "best")
  assert meta["step"] == latest == 6


def test_second_process_on_a_workdir_is_refused(split, tmp_path):
  workdir = tmp_path / "run"
  with checkpoints.workdir_lock(str(workdir)):  # another trainer holds the workdir
    with pytest.raises(checkpoints.WorkdirError, match=rf"{workdir} is in use: .*\.lock"):
      _train(split, workdir)
  assert not (workdir / "checkpoints").exists()
  # A crashed holder leaves no lock behind: a process that dies with the lock held.
  subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
      import os
      from jaxrec.training import checkpoints
      checkpoints.workdir_lock({str(workdir)!r}).__enter__()
      os._exit(1)
  """)], check=False, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert _train(split, workdir)["step"] == 6
