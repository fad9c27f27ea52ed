"""Progress of the long commands (evaluate, predict, erf) as tqdm bars on stderr: shown when
stderr is a terminal unless `--progress` or `--no-progress` says otherwise, on process 0 only,
and never mixed into what the commands print on stdout."""

from __future__ import annotations

import argparse
import sys

import jax
import tqdm


def add_flag(parser: argparse.ArgumentParser) -> None:
  """`--progress` / `--no-progress` (default: shown when stderr is a terminal)."""
  parser.add_argument('--progress', action=argparse.BooleanOptionalAction, default=None,
                      help='progress bars on stderr (default: when stderr is a terminal)')


def bar(total: int, desc: str, unit: str, show: bool | None, at_least: int = 0) -> tqdm.tqdm:
  """A bar over `total` units. `show` None: shown when stderr is a terminal and `total` is at
  least `at_least`."""
  if show is None:
    show = sys.stderr.isatty() and total >= at_least
  return tqdm.tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                   disable=not show or jax.process_index() != 0)
