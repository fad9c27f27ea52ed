"""TensorFlow only reads and augments images: keep it off the accelerators, which JAX uses."""

from __future__ import annotations

import tensorflow as tf


def keep_tensorflow_on_the_cpu() -> None:
  """Hides every GPU and TPU from TensorFlow; call before its first op."""
  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')
