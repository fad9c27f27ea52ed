"""Predicting with any model: its own eval transform, batches, top-k with class names.

  classifier = Classifier.from_source('hf-hub:timm/sequencer2d_s.in1k')
  classifier.predict([pil_image, uint8_array])          # notebooks
  classifier.predict_files(['photo.jpg', 'scan.png'])  # files: unreadable ones say why

Each image goes through timm's evaluation transform with the model record's data config
(input size, crop_pct, interpolation, mean, std), as every evaluation does: prepared on the host
(`transforms.eval_example`, `eval_crop.add_coefficients`), resized and normalised on the device
with the forward, bit-exact to Pillow. Files are refused by name, never decoded, when their
header claims more than `max_pixels` pixels.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from sequencer_jax import pretrained
from sequencer_jax.data import eval_crop, folder, image_header, transforms, unreadable
from sequencer_jax.models import DataConfig

IMAGE_SUFFIXES = folder.DECODABLE_EXTENSIONS + ('.gif',)


class ImageError(ValueError):
  """An image (or a folder of them) that cannot be used; the message names it."""


def find_images(paths: Iterable[str]) -> list[str]:
  """Files given, plus the images (by suffix) found by a sorted recursive walk of folders given."""
  found: list[str] = []
  for path in paths:
    if os.path.isfile(path):
      found.append(path)
    elif os.path.isdir(path):
      inside = [os.path.join(root, name) for root, _, names in sorted(os.walk(path))
                for name in sorted(names) if name.lower().endswith(IMAGE_SUFFIXES)]
      if not inside:
        raise ImageError(f'{path} holds no images ({", ".join(IMAGE_SUFFIXES)})')
      found += inside
    else:
      raise ImageError(f'{path} does not exist')
  return found


def rgb_array(image: Any) -> np.ndarray:
  """A PIL image, or an (H, W) / (H, W, 1|3|4) uint8 array, as (H, W, 3) uint8 RGB."""
  if hasattr(image, 'convert') and hasattr(image, 'size'):  # A PIL image.
    image = image.convert('RGB')
  array = np.asarray(image)
  if array.dtype != np.uint8:
    raise ImageError(f'expected uint8 pixels (0..255), got {array.dtype}')
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or 0 in array.shape:
    raise ImageError(f'expected an (H, W) or (H, W, 1|3|4) image, got shape {array.shape}')
  return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array[..., :3]


def _batch(prepared: Sequence[dict[str, np.ndarray]], size: int,
           config: DataConfig) -> dict[str, np.ndarray]:
  """Prepared images stacked field by field, padded to `size` images (the padding marked
  host-resized: zeros), with their resize coefficients."""
  batch = {}
  for name, _ in eval_crop.HOST_FIELDS:
    stacked = np.stack([p[name] for p in prepared])
    padding = np.full((size - len(stacked), *stacked.shape[1:]), name == 'host_resized')
    batch[name] = np.concatenate([stacked, padding.astype(stacked.dtype)])
  return eval_crop.add_coefficients(batch, config)


class Classifier:
  """A loaded model ready to classify images: its transform, a jitted forward, its labels."""

  def __init__(self, loaded: pretrained.Pretrained, batch_size: int = 32):
    self.model, self.variables, self.record = loaded
    self.batch_size = batch_size
    config = self.record.data_config
    model_input = functools.partial(eval_crop.model_input, config=config)
    self._prepare = tf.function(lambda image: transforms.eval_example(image, config),
                                input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    self._decode = tf.function(transforms.decode_rgb)
    self._header = tf.function(image_header.header_size)
    self._model_input = jax.jit(model_input)
    self._probabilities = jax.jit(lambda variables, batch: jax.nn.softmax(
        self.model.apply(variables, model_input(batch)).astype(jnp.float32)))

  @classmethod
  def from_source(cls, source: str, *, ema: bool = False, batch_size: int = 32) -> Classifier:
    """The classifier of any model source `load_pretrained` takes."""
    return cls(pretrained.load_pretrained(source, ema=ema), batch_size)

  def label(self, index: int) -> str:
    names = self.record.class_names
    return str(index) if names is None else names[index]

  def read_file(self, path: str, max_pixels: int = image_header.MAX_PIXELS) -> np.ndarray:
    """The file's uint8 RGB pixels; ImageError, saying why in words, for a file that cannot be
    read, is no image (`unreadable.reason`) or is over the pixel limit."""
    try:
      with open(path, 'rb') as f:
        data = f.read()
    except OSError as e:
      raise ImageError(f'{path} cannot be read: {e.strerror or e}') from None
    encoded = tf.constant(data)
    try:
      height, width = self._header(encoded).numpy().tolist()
      over = image_header.over_limit(height, width, max_pixels)
      if over:
        raise ImageError(f'{path}: {over}')
      return self._decode(encoded).numpy()
    except tf.errors.OpError as e:
      why = unreadable.reason(data, e.message)
      raise ImageError(f'{path} cannot be read as an image: {why}') from None

  def prepare(self, image: Any) -> dict[str, np.ndarray]:
    """The host's part of the eval transform of one image (PIL or uint8 array)."""
    return {k: v.numpy() for k, v in self._prepare(tf.constant(rgb_array(image))).items()}

  def preprocess(self, image: Any) -> np.ndarray:
    """timm's eval transform of one image, whole: (input_size, input_size, 3) float32."""
    batch = _batch([self.prepare(image)], 1, self.record.data_config)
    return np.array(self._model_input(batch)[0])  # A writable copy, as torch.from_numpy wants.

  def probabilities(self, prepared: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
    """Class probabilities (N, num_classes) of prepared images, in fixed-size batches."""
    out = []
    for start in range(0, len(prepared), self.batch_size):
      chunk = prepared[start:start + self.batch_size]
      batch = _batch(chunk, self.batch_size, self.record.data_config)
      out.append(np.asarray(self._probabilities(self.variables, batch))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, self.record.num_classes), np.float32)

  def top_k(self, probabilities: np.ndarray, k: int) -> list[dict[str, Any]]:
    """The k most probable classes of one image: index, label, probability."""
    order = np.argsort(-probabilities, kind='stable')[:k]
    return [{'index': int(i), 'label': self.label(int(i)),
             'probability': float(probabilities[i])} for i in order]

  def predict(self, images: Sequence[Any], topk: int = 5) -> list[list[dict[str, Any]]]:
    """Top-k of each image (PIL images or uint8 arrays)."""
    probabilities = self.probabilities([self.prepare(image) for image in images])
    return [self.top_k(p, topk) for p in probabilities]

  def predict_files(self, paths: Sequence[str], topk: int = 5,
                    max_pixels: int = image_header.MAX_PIXELS) -> Iterator[dict[str, Any]]:
    """{'path', 'topk'} per file, in order, or {'path', 'error'} for one that cannot be read.

    Files are read and transformed on every core, one batch at a time.
    """
    def prepare(path: str) -> dict[str, np.ndarray] | str:
      try:
        return self.prepare(self.read_file(path, max_pixels))
      except ImageError as e:
        return str(e)

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
      for start in range(0, len(paths), self.batch_size):
        chunk = paths[start:start + self.batch_size]
        prepared = list(pool.map(prepare, chunk))
        good = [p for p in prepared if not isinstance(p, str)]
        results = iter(self.probabilities(good))
        for path, item in zip(chunk, prepared):
          if isinstance(item, str):
            yield {'path': path, 'error': item}
          else:
            yield {'path': path, 'topk': self.top_k(next(results), topk)}
