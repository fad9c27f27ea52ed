"""A pixel bomb for tests: a small PNG whose header and data declare a huge image.

`python tests/pixel_bomb.py DATASET WORKDIR` trains the tiny run on DATASET in its own process
and prints one JSON line with the process's peak memory (MiB) and the images it skipped.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import sys
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
  return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))


def write_png_bomb(path: str, width: int = 20000, height: int = 20000) -> None:
  """A valid RGB PNG of width x height black pixels, compressed to about a megabyte."""
  compressor = zlib.compressobj(9)
  row = b'\x00' * (1 + 3 * width)  # Filter byte 0, then the pixels.
  data = b''.join(compressor.compress(row) for _ in range(height)) + compressor.flush()
  with open(path, 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n' + _chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2,
                                                               0, 0, 0))
            + _chunk(b'IDAT', data) + _chunk(b'IEND', b''))


def main(dataset: str, workdir: str) -> None:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from sequencer_jax.train import loop
  from tiny_run import tiny_config
  metrics = loop.train_and_evaluate(tiny_config(dataset, **{'optim.epochs': 1}), workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    skipped = max(json.loads(line).get('skipped_images', 0) for line in f)
  print(json.dumps({'peak_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    'skipped_images': skipped, 'top1': metrics['top1']}))


if __name__ == '__main__':
  main(*sys.argv[1:])
