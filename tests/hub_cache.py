"""A Hugging Face cache directory laid out as the hub lays it out, for tests (never the network)."""

from __future__ import annotations

import os

COMMIT = '0123456789abcdef0123456789abcdef01234567'


def write_hub_cache(cache: str, repo: str, files: dict[str, bytes]) -> str:
  """The hub cache's layout: blobs, a snapshot of commit COMMIT linking to them, refs/main."""
  root = os.path.join(cache, 'models--' + repo.replace('/', '--'))
  snapshot = os.path.join(root, 'snapshots', COMMIT)
  os.makedirs(os.path.join(root, 'blobs'))
  os.makedirs(snapshot)
  os.makedirs(os.path.join(root, 'refs'))
  with open(os.path.join(root, 'refs', 'main'), 'w') as f:
    f.write(COMMIT)
  for i, (name, data) in enumerate(files.items()):
    blob = os.path.join(root, 'blobs', f'{i:040x}')
    with open(blob, 'wb') as f:
      f.write(data)
    os.symlink(os.path.relpath(blob, snapshot), os.path.join(snapshot, name))
  return snapshot
