"""Weights: this project's model format, and PyTorch checkpoints (key mapping, files, timm check)."""

from sequencer_jax.weights.model_format import ModelFormatError, load_pretrained, save_model

__all__ = ['ModelFormatError', 'load_pretrained', 'save_model']
