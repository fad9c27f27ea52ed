"""The conversion command: released PyTorch Sequencer checkpoints to sequencer_jax models, and back.

  python convert_torch_weights.py SRC DST [--model NAME] [--num-classes N] [--check]
  python convert_torch_weights.py --to-torch SRC DST.safetensors [--layout timm|original]
  python convert_torch_weights.py --to-torch SRC DIR

SRC is the original repository's release `.pth` or timm's `.bin`/`.safetensors`, in either key
layout; DST is a new model directory that `sequencer_jax.load_pretrained` and training's
`init_from` read. With --to-torch, SRC is any model source (a model directory, e.g. an export,
a training workdir, ...). DST.safetensors is one state_dict, in timm's layout for timm's models,
else the original's. Any other DST is a new timm Hub folder (model.safetensors, config.json and
a README.md model card): uploaded as <owner>/<name>, timm.create_model("hf-hub:<owner>/<name>",
pretrained=True) loads it. Nothing is written unless the conversion succeeded; an existing DST
is never overwritten.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from sequencer_jax import pretrained
from sequencer_jax.models import list_models
from sequencer_jax.weights import (ModelRecord, hub_folder, save_model, timm_check, torch_files,
                                   torch_keys)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('src', help='PyTorch checkpoint (or, with --to-torch, any model source)')
  p.add_argument('dst', help='new output directory (with --to-torch: a .safetensors file, or '
                 'a timm Hub folder)')
  p.add_argument('--model', choices=list_models(), metavar='NAME',
                 help='registered model name (default: detected from the keys)')
  p.add_argument('--num-classes', type=int, help='new zero-initialised head with N classes '
                 '(0: no head), for transfer learning')
  p.add_argument('--check', action='store_true',
                 help='compare with timm on a random batch and print the largest difference')
  p.add_argument('--to-torch', action='store_true',
                 help='export the model SRC for PyTorch: a state_dict DST.safetensors, or a '
                 'timm Hub folder DST')
  p.add_argument('--layout', choices=('timm', 'original'),
                 help='key layout of a .safetensors export (default: timm for timm\'s models)')
  return p


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  if args.to_torch and (args.model or args.num_classes is not None or args.check):
    parser.error('--model, --num-classes and --check apply to conversion, not to --to-torch')
  if args.layout and not (args.to_torch and args.dst.endswith('.safetensors')):
    parser.error("--layout applies to --to-torch DST.safetensors only (a timm Hub folder holds "
                 "timm's layout)")
  start = time.perf_counter()
  try:
    if args.to_torch:
      if os.path.exists(args.dst):
        raise FileExistsError(f'{args.dst} already exists; refusing to overwrite it')
      if args.dst.endswith(pretrained.TORCH_SUFFIXES) and not args.dst.endswith('.safetensors'):
        raise ValueError(f'{args.dst}: --to-torch writes a .safetensors file (name the file '
                         f'*.safetensors) or a timm Hub folder (a name without a file suffix)')
      record, params = pretrained.resolve(args.src)
      if args.dst.endswith('.safetensors'):
        layout = torch_files.export_file(record, params, args.dst, args.layout)
        print(f'wrote {args.dst} ({layout} layout) in {time.perf_counter() - start:.1f}s')
        return 0
      config = hub_folder.write_hub_folder(record, params, args.dst)
      print(f'wrote the timm Hub folder {args.dst} ({config["architecture"]}'
            f'{" with model_args" if "model_args" in config else ""}, {record.num_classes} '
            f'classes) in {time.perf_counter() - start:.1f}s; share it with `hf upload '
            f'<owner>/<name> {args.dst}`, then timm.create_model("hf-hub:<owner>/<name>", '
            f'pretrained=True)')
      return 0
    if args.num_classes is not None and args.num_classes < 0:
      raise ValueError(f'--num-classes must be >= 0, got {args.num_classes}')
    if os.path.exists(args.dst):
      raise FileExistsError(f'{args.dst} already exists; refusing to overwrite it')
    state_dict = torch_files.read_state_dict(args.src)
    name, classes, params = torch_keys.convert_state_dict(state_dict, args.model, args.num_classes)
    if args.check:
      timm_check.check_timm_available(name)  # Before anything is written.
    record = ModelRecord.registered(name, classes, converted_from=os.path.abspath(args.src))
    save_model(args.dst, record, params)  # Written only after everything above succeeded.
    print(f'converted {args.src} -> {args.dst}: {name}, {classes} classes, '
          f'{time.perf_counter() - start:.1f}s')
    if args.check:
      diff = timm_check.timm_logit_difference(state_dict, name, classes, params)
      print(f'check against timm: max |difference| = {diff:.3e}')
  except (torch_keys.ConversionError, pretrained.SourceError, FileExistsError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


def run() -> None:
  """The console script's entry point."""
  sys.exit(main())


if __name__ == '__main__':
  run()
