"""What the training tests share: the generated folder of the tiny run."""

from __future__ import annotations

import pytest
from tiny_run import write_dataset


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  return write_dataset(str(tmp_path_factory.mktemp('data') / 'patterns'))
