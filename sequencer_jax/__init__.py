"""sequencer-jax: Sequencer2D ("Sequencer: Deep LSTM for Image Classification") in JAX/Flax."""

from sequencer_jax.models import Sequencer, SequencerArch, create_model, list_models, model_info
from sequencer_jax.pretrained import load_pretrained
from sequencer_jax.weights import ModelRecord, save_model

__all__ = ['ModelRecord', 'Sequencer', 'SequencerArch', 'create_model', 'list_models',
           'load_pretrained', 'model_info', 'save_model']
