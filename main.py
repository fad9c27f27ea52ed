"""Train or evaluate Sequencer: `python main.py --config=configs/sequencer2d_s.py --workdir=DIR`.

The command itself is `sequencer_jax/train/__main__.py` (also `python -m sequencer_jax.train`, and
installed as `sequencer-train`); its docstring lists the flags, and configs/default.py every config
field.
"""

from sequencer_jax.train.__main__ import run

if __name__ == '__main__':
  run()
