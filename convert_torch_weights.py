"""Converts released PyTorch Sequencer checkpoints to sequencer_jax models, and back.

  python convert_torch_weights.py SRC DST [--model NAME] [--num-classes N] [--check]
  python convert_torch_weights.py --to-torch SRC DST.safetensors [--layout timm|original]

The command itself is `sequencer_jax/convert.py` (also `python -m sequencer_jax.convert`, and installed
as `sequencer-convert`).
"""

from sequencer_jax.convert import run

if __name__ == '__main__':
  run()
