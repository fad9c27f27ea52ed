"""What a directory holds, to assert that a refused input changed nothing."""

from __future__ import annotations

import hashlib
import os


def snapshot(root: str) -> dict[str, str]:
  """Every file and directory under `root` (relative path -> sha256 of the bytes, or 'dir')."""
  entries = {}
  for directory, subdirectories, files in os.walk(root):
    for name in subdirectories:
      entries[os.path.relpath(os.path.join(directory, name), root)] = 'dir'
    for name in files:
      path = os.path.join(directory, name)
      with open(path, 'rb') as f:
        entries[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return entries
