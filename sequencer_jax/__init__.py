"""sequencer-jax: Sequencer2D ("Sequencer: Deep LSTM for Image Classification") in JAX/Flax."""

from sequencer_jax.checkpoint import load_pretrained, save_model
from sequencer_jax.model import Sequencer, SequencerArch
from sequencer_jax.registry import create_model, list_models, model_info

__all__ = ['Sequencer', 'SequencerArch', 'create_model', 'list_models', 'load_pretrained',
           'model_info', 'save_model']
