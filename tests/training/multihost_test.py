"""Multi-host for real on localhost: 2 processes x 2 CPU devices (gloo collectives), each fed
its own data shard, take the same sharded train steps as one process on 4 devices.
"""

import importlib.util
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
from jaxrec.training import partitioning

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")
REPO = WORKER.parent.parent.parent
STEPS = 3


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _worker_module():
  spec = importlib.util.spec_from_file_location("multihost_worker", WORKER)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_two_processes_match_one_process(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  port = _free_port()
  procs = []
  for i in range(2):
    out = tmp_path / f"p{i}.json"
    log = open(tmp_path / f"p{i}.log", "w")
    procs.append((subprocess.Popen(
        [sys.executable, str(WORKER), f"--process_id={i}", "--num_processes=2",
         f"--port={port}", f"--steps={STEPS}", "--model=2", f"--out={out}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO)), out, log))
  try:
    for proc, _, _ in procs:
      proc.wait(timeout=180)
  finally:
    for proc, _, log in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
      log.close()
  for i, (proc, out, _) in enumerate(procs):
    assert proc.returncode == 0, (tmp_path / f"p{i}.log").read_text()[-3000:]
  results = [json.loads(out.read_text()) for _, out, _ in procs]
  assert [r["process_index"] for r in results] == [0, 1]
  assert all(r["device_count"] == 4 and r["local_device_count"] == 2 for r in results)
  np.testing.assert_allclose(results[0]["losses"], results[1]["losses"], rtol=1e-6)
  single = _worker_module().run_steps(STEPS, mesh_config=partitioning.MeshConfig(model=2),
                                      devices=jax.devices()[:4])
  np.testing.assert_allclose(results[0]["losses"], single, rtol=1e-5)
