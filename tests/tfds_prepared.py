"""TFDS datasets that read as prepared in a test's data_dir, for `tfds.testing.mock_data`."""

from __future__ import annotations

import os

import tensorflow_datasets as tfds


def fake_prepared(data_dir: str, name: str, splits: dict[str, int]) -> None:
  """Writes dataset_info.json for `name` so that it reads as prepared; mock_data fills the rest."""
  builder = tfds.builder(name, data_dir=data_dir)
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=k, shard_lengths=[v], num_bytes=0) for k, v in splits.items()]))
  os.makedirs(builder.data_dir, exist_ok=True)
  builder.info.write_to_directory(builder.data_dir)
