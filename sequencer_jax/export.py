"""The export command: a training run's weights as a model directory anyone can load.

  python -m sequencer_jax.export WORKDIR DST [--last | --step N] [--ema]

Takes the run's model, as `load_pretrained(WORKDIR)` does: its best checkpoint (by validation
top-1) when it has one, else its newest. --last takes the newest, --step N checkpoint N; --ema
takes the EMA weights of a run with ema_decay. DST is
a new model directory: `sequencer_jax.load_pretrained(DST)`, training's `init_from`, predict
and `convert_torch_weights.py --to-torch` read it. An existing DST is never overwritten.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from sequencer_jax.errors import CheckpointError
from sequencer_jax.weights import ModelFormatError, ModelRecord, save_model
from sequencer_jax.weights.workdir import is_training_workdir, read_trained_model


def export(workdir: str, dst: str, *, last: bool = False, step: int | None = None,
           ema: bool = False) -> ModelRecord:
  """Writes one checkpoint of the run in `workdir` (see `read_trained_model`) to the new
  model directory `dst`; returns the record written."""
  if os.path.exists(dst):
    raise FileExistsError(f'{dst} already exists; refusing to overwrite it')
  if not os.path.isdir(workdir) or not is_training_workdir(workdir):
    raise ModelFormatError(f'{workdir} is not a training workdir (no model.json, checkpoints/ '
                           f'or best/)')
  record, params = read_trained_model(workdir, last=last, step=step, ema=ema)
  provenance = dict(record.provenance)
  record = dataclasses.replace(record, provenance={'exported_from': provenance.pop('workdir'),
                                                   **provenance})
  save_model(dst, record, params)
  return record


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m sequencer_jax.export', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('workdir', help='the training run (main.py --workdir)')
  p.add_argument('dst', help='the new model directory')
  which = p.add_mutually_exclusive_group()
  which.add_argument('--last', action='store_true',
                     help='the newest checkpoint, even when the run has a best one')
  which.add_argument('--step', type=int, help='checkpoint N of checkpoints/')
  p.add_argument('--ema', action='store_true', help='the EMA weights instead of the raw ones')
  return p


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  logging.getLogger('absl').setLevel(logging.ERROR)  # orbax's notes on read-only managers.
  try:
    record = export(args.workdir, args.dst, last=args.last, step=args.step, ema=args.ema)
  except (ModelFormatError, CheckpointError, FileExistsError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  names = 'no class names' if record.class_names is None else f'{record.num_classes} class names'
  made = record.provenance
  print(f'exported the {made["checkpoint"]} checkpoint (step {made["step"]}, {made["weights"]} '
        f'weights) of {args.workdir} -> {args.dst}: {record.name or "custom architecture"}, '
        f'{record.num_classes} classes, {names}')
  return 0


def run() -> None:
  """The console script's entry point."""
  sys.exit(main())


if __name__ == '__main__':
  run()
