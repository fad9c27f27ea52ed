"""`python -m sequencer_jax.erf --model SOURCE --images DIR --out erf.png`: the ERF command.

It lives in sequencer_jax/commands/erf.py; the maps are computed by sequencer_jax/evaluation/erf.py.
"""

from sequencer_jax.commands.erf import run

if __name__ == '__main__':
  run()
