"""Train or evaluate Sequencer: `python main.py --config=configs/sequencer2d_s.py --workdir=DIR`.

The command itself is `sequencer_jax.commands.train` (also installed as `sequencer-train`); its
docstring lists the flags, and configs/default.py every config field.
"""

from sequencer_jax.commands.train import run

if __name__ == '__main__':
  run()
