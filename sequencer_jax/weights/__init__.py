"""Weights: this project's model format, PyTorch checkpoints (key mapping, files, timm check), and
the Hugging Face cache."""

from sequencer_jax.weights.model_format import ModelFormatError, ModelRecord, save_model

__all__ = ['ModelFormatError', 'ModelRecord', 'save_model']
