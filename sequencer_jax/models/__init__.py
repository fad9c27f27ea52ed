"""The Sequencer architectures: modules, recurrences, the registry of named models, FLOP counts."""

from sequencer_jax.models.data_config import DataConfig
from sequencer_jax.models.registry import ModelInfo, create_model, list_models, model_info
from sequencer_jax.models.sequencer import (Sequencer, SequencerArch, abstract_params,
                                            replace_head)

__all__ = ['DataConfig', 'ModelInfo', 'Sequencer', 'SequencerArch', 'abstract_params',
           'create_model', 'list_models', 'model_info', 'replace_head']
