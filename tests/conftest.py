"""Test setup: 8 fake CPU devices (set before jax is imported) and shared fixtures."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402


def pytest_addoption(parser):
  parser.addoption("--data_dir", default=None,
                   help="folder with the real datasets (beauty/, sports/, yelp/, "
                        "ml100k/, hm/); defaults to $JAXREC_DATA_DIR.")


@pytest.fixture(scope="session")
def shared_data_dir(request) -> pathlib.Path:
  """The real-data folder from --data_dir or $JAXREC_DATA_DIR; skips if absent."""
  path = request.config.getoption("--data_dir") or os.environ.get("JAXREC_DATA_DIR")
  if not path or not pathlib.Path(path).is_dir():
    pytest.skip("real data not available: pass --data_dir or set JAXREC_DATA_DIR")
  return pathlib.Path(path)


@pytest.fixture(scope="session", autouse=True)
def _temp_dir_under_pytest(tmp_path_factory):
  """Temporary files of the tests (and of their subprocesses) go under pytest's own tmp folder.

  tensorflow-datasets makes an empty `tmpXXXXtfds` folder whenever a builder of an unprepared
  dataset is created (`DatasetInfo.initialize_from_bucket`, before it finds GCS disabled) and
  never removes it; pytest prunes its own folders, so the suite leaves nothing in /tmp.
  """
  import tempfile  # pylint: disable=import-outside-toplevel
  folder = str(tmp_path_factory.mktemp("tempfile"))
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(tempfile, "tempdir", folder)
    mp.setenv("TMPDIR", folder)
    yield folder
