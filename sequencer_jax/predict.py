"""`python -m sequencer_jax.predict --model SOURCE PATH...`: the predict command.

It lives in sequencer_jax/commands/predict.py.

The Python API for arrays and PIL images is `sequencer_jax.inference.Classifier`.
"""

from sequencer_jax.commands.predict import run

if __name__ == '__main__':
  run()
