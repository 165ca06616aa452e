"""notebooks/quickstart.ipynb runs end to end (smoke sizes) in a fresh kernel of this Python."""

import json
import os
import pathlib
import re
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
KERNEL = "jaxrec-notebook-test"


def _outputs(cell) -> str:
  """The text a code cell printed (streams, results, errors)."""
  parts = []
  for out in cell.get("outputs", []):
    if out.output_type == "stream":
      parts.append(out.text)
    elif out.output_type in ("execute_result", "display_data"):
      parts.append(out.get("data", {}).get("text/plain", ""))
    elif out.output_type == "error":
      parts.append("\n".join(out.traceback))
  return "".join(parts)


def test_quickstart_notebook_runs_in_smoke_mode(tmp_path, monkeypatch):
  # A kernelspec for this interpreter (the venv's), found first through JUPYTER_PATH.
  spec = tmp_path / "jupyter" / "kernels" / KERNEL
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "jaxrec test", "language": "python"}))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  monkeypatch.setenv("JAXREC_NOTEBOOK_SMOKE", "1")
  workdir = tmp_path / "workdir"
  monkeypatch.setenv("JAXREC_NOTEBOOK_WORKDIR", str(workdir))
  # conftest fakes 8 CPU devices; the notebook is meant for the real device count.
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                 os.environ.get("XLA_FLAGS", "")).strip()
  monkeypatch.setenv("XLA_FLAGS", flags)

  nb = nbformat.read(str(NOTEBOOK), as_version=4)
  # Execute a copy: the repository's notebook (with its saved outputs) is never written.
  client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=300,
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError on the first failing cell

  code = [c for c in nb.cells if c.cell_type == "code"]
  assert "parameters" in code[0].metadata.get("tags", [])
  assert "smoke mode" in _outputs(code[0])
  text = "\n".join(_outputs(c) for c in code)
  assert "Traceback" not in text
  assert "collision rate" in text
  assert "top-5 beam search" in text
  assert re.search(r"beam search vs exact top-\d+ on \d+ users", text) and "overlap" in text
  final = _outputs(code[-1])
  assert "Recall@10" in final and "generator (TIGER)" in final and "CoOccurrence" in final
  images = sum(1 for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
  assert images >= 5
  assert (workdir / "semantic_ids.npy").is_file()
  assert (workdir / "generator" / "metrics.jsonl").is_file()
  assert (workdir / "generator" / "eval" / "test_metrics.json").is_file()
