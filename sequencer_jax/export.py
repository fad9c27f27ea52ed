"""`python -m sequencer_jax.export WORKDIR DST`: the export command (commands/export.py)."""

from sequencer_jax.commands.export import run

if __name__ == '__main__':
  run()
