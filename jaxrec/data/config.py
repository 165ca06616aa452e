"""Which dataset a run reads: a frozen config that gin binds, and its loader."""

from __future__ import annotations

import dataclasses
from typing import Optional

from jaxrec.data.dataset import SequentialDataset


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """Names a dataset and where its files are.

  Attributes:
    name: one of `jaxrec.data.loading.dataset_names()` ("synthetic" needs no files).
    manual_dir: folder with the upstream files; None = $JAXREC_DATA_DIR/<name>.
    data_dir: where tfds keeps prepared array_record files; None =
      $JAXREC_TFDS_DIR or ~/tensorflow_datasets.
    options: builder options (k-core, chronological order, item level, or the
      SyntheticConfig fields for "synthetic").
  """
  name: str = "synthetic"
  manual_dir: Optional[str] = None
  data_dir: Optional[str] = None
  options: dict = dataclasses.field(default_factory=dict)

  def load(self) -> SequentialDataset:
    from jaxrec.data import loading  # pylint: disable=g-import-not-at-top
    return loading.load_dataset(self.name, manual_dir=self.manual_dir,
                                data_dir=self.data_dir, **dict(self.options))
