"""The errors of bad input that more than one package raises.

Each message says what is wrong and what to do about it; the commands print it alone, as one
line, with no traceback.
"""


class DatasetError(ValueError):
  """A dataset (an image folder or a TFDS dataset) that cannot be used; the message says what to
  fix."""


class CheckpointError(ValueError):
  """A training checkpoint that is missing, damaged or belongs to another run; nothing was
  changed."""
