"""`python -m sequencer_jax.evaluate --model SOURCE --eval NAME=DATASET`: the evaluate command.

It lives in sequencer_jax/commands/evaluate.py.
"""

from sequencer_jax.commands.evaluate import run

if __name__ == '__main__':
  run()
