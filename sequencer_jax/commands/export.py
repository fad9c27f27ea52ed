"""The export command: a training run's weights as a model directory anyone can load.

  python -m sequencer_jax.export WORKDIR DST [--best | --step N] [--ema]

Takes the newest checkpoint of WORKDIR by default, the best one (by validation top-1) with
--best, or checkpoint N with --step; --ema takes the EMA weights of a run with ema_decay. DST is
a new model directory: `sequencer_jax.load_pretrained(DST)`, training's `init_from`, predict
and `convert_torch_weights.py --to-torch` read it. An existing DST is never overwritten.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from sequencer_jax import pretrained
from sequencer_jax.train.checkpoints import CheckpointError, read_trained_params
from sequencer_jax.weights import ModelRecord, save_model


def export(workdir: str, dst: str, *, best: bool = False, step: int | None = None,
           ema: bool = False) -> tuple[ModelRecord, int]:
  """Writes one checkpoint of the run in `workdir` to the new model directory `dst`; returns the
  record written and the step exported."""
  if os.path.exists(dst):
    raise FileExistsError(f'{dst} already exists; refusing to overwrite it')
  if not os.path.isdir(workdir) or not pretrained.is_training_workdir(workdir):
    raise pretrained.SourceError(f'{workdir} is not a training workdir (no model.json, '
                                 f'checkpoints/ or best/)')
  record = pretrained.read_workdir_record(workdir)
  checkpoint = 'best' if best else ('newest' if step is None else 'chosen')
  step, params = read_trained_params(workdir, step=step, best=best, ema=ema)
  record = ModelRecord(record.arch, record.num_classes, record.class_names, record.data_config,
                       {'exported_from': os.path.abspath(workdir), 'step': step,
                        'checkpoint': checkpoint, 'weights': 'ema' if ema else 'raw'})
  save_model(dst, record, params)
  return record, step


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m sequencer_jax.export', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('workdir', help='the training run (main.py --workdir)')
  p.add_argument('dst', help='the new model directory')
  which = p.add_mutually_exclusive_group()
  which.add_argument('--best', action='store_true', help='the best checkpoint by top-1')
  which.add_argument('--step', type=int, help='checkpoint N of checkpoints/')
  p.add_argument('--ema', action='store_true', help='the EMA weights instead of the raw ones')
  return p


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  logging.getLogger('absl').setLevel(logging.ERROR)  # orbax's notes on read-only managers.
  try:
    record, step = export(args.workdir, args.dst, best=args.best, step=args.step, ema=args.ema)
  except (pretrained.SourceError, CheckpointError, FileExistsError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  names = 'no class names' if record.class_names is None else f'{record.num_classes} class names'
  print(f'exported step {step} of {args.workdir} ({record.provenance["weights"]} weights) -> '
        f'{args.dst}: {record.name or "custom architecture"}, {record.num_classes} classes, '
        f'{names}')
  return 0


def run() -> None:
  """The console script's entry point."""
  sys.exit(main())
