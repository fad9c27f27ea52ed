"""tf.data pipelines: the host's part of timm's training augmentation and of its validation
transform, per process.

For training the host only reads, decodes the crop window and places it on a fixed uint8
canvas; the resize, flip and RandAugment run in the jitted train step (`device_augment.py`).

Training reads one process's share of the split per epoch in a reproducible order (seeded by the
run's seed, the epoch and the process), drops the last incomplete batch as timm's loader does,
and gives every process the same number of steps. Every random draw is stateless, derived from
(seed, epoch, process, position in the epoch), so a run resumed at step k sees exactly the
batches an uninterrupted run would have seen.

Evaluation reads each example exactly once over all processes: every process runs the same
number of batches, the last ones padded with masked-out zero images.

A file that cannot be decoded is skipped, logged with its name and why in words (`skip_reason`),
and counted (`skipped`), never a crash; on resume, records are skipped before decoding, so
undecodable files inside the part of an epoch that is skipped shift the rest of that epoch by
their count.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf

from sequencer_jax.data import eval_crop, image_header, pil_resize, transforms, unreadable
from sequencer_jax.errors import DatasetError
from sequencer_jax.data.sources import Source
from sequencer_jax.models.data_config import DataConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainAugment:
  """The host's part of the training augmentation: RandomResizedCrop's box and filter, the crop
  placed on a canvas. The flip, the resize itself and RandAugment follow in the train step
  (`device_augment.py`). Each field mirrors the timm 0.5.4 train.py flag named beside it."""

  scale: tuple[float, float] = (0.08, 1.0)  # --scale
  ratio: tuple[float, float] = (3 / 4, 4 / 3)  # --ratio
  interpolation: str = 'random'  # --train-interpolation
  fused_decode: bool = True  # (no timm flag) decode only the crop window of JPEGs
  canvas_size: int = pil_resize.CANVAS_SIZE  # (no timm flag) side of the uint8 canvas sent to the device

def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.threading.max_intra_op_parallelism = 1
  options.autotune.ram_budget = 4 << 30
  return options


def _fold(seed: tf.Tensor, *values) -> tf.Tensor:
  for value in values:
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(value, tf.int64))
  return seed


def train_transform(encoded: tf.Tensor, seed: tf.Tensor, size: int,
                    augment: TrainAugment) -> dict[str, tf.Tensor]:
  """One training image as the host prepares it: decoded, its RandomResizedCrop box and filter
  drawn, the crop on the canvas (`transforms.decode_crop_on_canvas`); the step resizes it to
  `size`, flips it and runs RandAugment."""
  # The first of the three draws made here before the flip and RandAugment moved into the
  # step: the boxes and filters are the ones drawn before.
  crop = tf.random.experimental.stateless_split(seed, 3)[0]
  return transforms.decode_crop_on_canvas(encoded, crop, augment.canvas_size, size,
                                          augment.scale, augment.ratio, augment.interpolation,
                                          augment.fused_decode)


def skip_reason(source: Source, index: int, count: int, shuffle_seed: int | None, position: int,
                max_pixels: int = image_header.MAX_PIXELS) -> str:
  """Why the record at `position` of `source.records(index, count, shuffle_seed)` was skipped, in
  words: over the pixel limit, or why it does not decode (`unreadable.reason`), read again."""
  try:
    data = source.read_encoded(index, count, shuffle_seed, position)
  except OSError as e:
    return f'cannot be read: {e.strerror or e}'
  if data is None:
    return 'cannot be decoded or is over the pixel limit'
  encoded = tf.constant(data)
  try:
    height, width = image_header.header_size(encoded).numpy().tolist()
    over = image_header.over_limit(height, width, max_pixels)
    if over:
      return over
    transforms.decode_rgb(encoded)
  except tf.errors.OpError as e:
    return unreadable.reason(data, e.message)
  return 'it failed to read or decode once, and decodes when read again'


class _Batches:
  """Numpy batches of a tf.data pipeline whose elements carry their record position; a gap in
  the positions is a skipped (undecodable) record, named with why (`explain`) in a warning and
  kept in `skipped` (name: reason).

  Positions run up to `end_position`; with `covers_end`, the last batch must have seen them all.
  """

  def __init__(self, dataset: tf.data.Dataset, num_batches: int,
               describe: Callable[[int], str], explain: Callable[[int], str], end_position: int,
               first_position: int = 0, covers_end: bool = False):
    self._iterator = dataset.as_numpy_iterator()
    self._describe = describe
    self._explain = explain
    self._next_position = first_position
    self._end_position = end_position
    self._covers_end = covers_end
    self.num_batches = num_batches
    self.remaining = num_batches
    self.skipped: dict[str, str] = {}  # Name: why it was skipped.
    self.images = 0  # Yielded so far, padding excluded.
    self.host_resized = 0  # Of those, crops larger than the canvas, resized on the host.

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self.remaining == 0:
      raise StopIteration
    try:
      batch = next(self._iterator)
    except StopIteration:
      self._skip_until(self._end_position)
      first = '; '.join(f'{name}: {why}' for name, why in list(self.skipped.items())[:5])
      raise DatasetError(f'the data ran out {self.remaining} batch(es) early: '
                         f'{len(self.skipped)} record(s) could not be decoded '
                         f'(first: {first})') from None
    self.remaining -= 1
    positions = batch.pop('position')
    for position in positions:
      if position >= 0:  # Not padding.
        self._skip_until(position)
    self.images += int((positions >= 0).sum())
    if 'host_resized' in batch:
      self.host_resized += int((batch.pop('host_resized') & (positions >= 0)).sum())
    if self.remaining == 0 and self._covers_end:
      self._skip_until(self._end_position)
    return batch

  def _skip_until(self, position: int) -> None:
    for missing in range(self._next_position, position):
      name = self._describe(missing)
      if name in self.skipped:  # Seen again in the second pass of a training epoch.
        continue
      self.skipped[name] = self._explain(missing)
      log.warning('skipped %s: %s; %d skipped so far', name, self.skipped[name],
                  len(self.skipped))
    self._next_position = max(self._next_position, position + 1)


def steps_per_epoch(source: Source, global_batch: int, process_count: int) -> int:
  """Training steps per epoch: the smallest share's full batches (timm drops the last one)."""
  if global_batch % process_count:
    raise ValueError(f'the global batch {global_batch} does not split evenly over '
                     f'{process_count} processes')
  local = global_batch // process_count
  steps = min(source.shard_size(i, process_count) for i in range(process_count)) // local
  if steps == 0:
    raise DatasetError(f'{source.num_examples} training examples over {process_count} '
                       f'process(es) do not fill one batch of {global_batch}')
  return steps


def train_batches(source: Source, *, global_batch: int, image_size: int,
                  augment: TrainAugment, seed: int, epoch: int, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1,
                  max_pixels: int = image_header.MAX_PIXELS) -> _Batches:
  """This process's batches of training epoch `epoch` from step `start_step` on.

  Yields {'image': uint8 canvases (b, S, S, 3), 'crop_size': int32 (b, 2), 'bicubic': bool (b,),
  'label': int32 (b,)} with b = global_batch / process_count and S = augment.canvas_size, for
  exactly `steps_per_epoch - start_step` steps on every process; the train step resizes each
  crop to `image_size` (`device_augment.augment_batch`). Images whose header declares more than
  `max_pixels` pixels are skipped undecoded, and named. The iterator counts the images it
  yielded (`images`) and those whose crop was larger than the canvas (`host_resized`).
  """
  steps = steps_per_epoch(source, global_batch, process_count)
  if not 0 <= start_step < steps:
    raise ValueError(f'start_step {start_step} is not in [0, {steps})')
  local = global_batch // process_count
  epoch_seed = int(np.random.SeedSequence([seed, epoch, process_index]).generate_state(1)[0])
  base = tf.constant([seed, epoch * process_count + process_index], tf.int64)

  def example(position, record):
    encoded = image_header.refuse_over_limit(record['image'], max_pixels)
    prepared = train_transform(encoded, _fold(base, position), image_size, augment)
    return {**prepared, 'label': record['label'], 'position': position}

  records = source.records(process_index, process_count, shuffle_seed=epoch_seed)
  # A second pass over the same order stands in for records that turn out undecodable.
  dataset = (records.repeat(2).enumerate().skip(start_step * local)
             .map(example, num_parallel_calls=tf.data.AUTOTUNE)
             .ignore_errors()
             .batch(local, drop_remainder=True)
             .prefetch(2)
             .with_options(_options()))
  size = source.shard_size(process_index, process_count)
  return _Batches(dataset, steps - start_step,
                  lambda p: source.describe(process_index, process_count, epoch_seed, p % size),
                  lambda p: skip_reason(source, process_index, process_count, epoch_seed,
                                        p % size, max_pixels),
                  end_position=2 * size, first_position=start_step * local)


class TrainSteps:
  """This process's batches for every training step from `start_step` on, epoch after epoch,
  with no end: the one iterator the training loop runs, zipped with its range of steps. Each
  epoch is `train_batches(..., epoch=e)`, opened when its first batch is asked for; `epoch` is
  the one read last, whose counters (`skipped`, `images`, `host_resized`) the loop logs."""

  def __init__(self, source: Source, *, start_step: int, global_batch: int,
               process_count: int = 1, **epoch_kwargs):
    self._open = lambda epoch, start: train_batches(
        source, global_batch=global_batch, process_count=process_count, epoch=epoch,
        start_step=start, **epoch_kwargs)
    self._index, self._start = divmod(start_step,
                                      steps_per_epoch(source, global_batch, process_count))
    self.epoch: _Batches | None = None
    self._batches: Iterator[dict[str, np.ndarray]] = iter(())

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    try:
      return next(self._batches)
    except StopIteration:  # The first batch, or the end of an epoch: open the next epoch.
      if self.epoch is not None:
        self._index, self._start = self._index + 1, 0
      self.epoch = self._open(self._index, self._start)
      self._batches = iter(self.epoch)
      return next(self._batches)


def eval_coefficients(batch: dict[str, tf.Tensor], config: DataConfig) -> dict[str, tf.Tensor]:
  """A batch of `transforms.eval_example`s with their crops' coefficients added, one NumPy
  call per batch (`eval_crop.add_coefficients`)."""
  host_names = [name for name, _ in eval_crop.HOST_FIELDS]
  names, dtypes = zip(*eval_crop.COEFFICIENT_FIELDS)
  values = tf.numpy_function(
      lambda *host: tuple(eval_crop.add_coefficients(dict(zip(host_names, host)), config)[name]
                          for name in names),
      [batch[name] for name in host_names], [tf.as_dtype(d) for d in dtypes], stateful=False)
  shapes = eval_crop.shapes(config)
  return {**batch, **{name: tf.ensure_shape(value, (None, *shapes[name]))
                      for name, value in zip(names, values)}}


def eval_batches(source: Source, *, batch_size: int, data_config: DataConfig,
                 process_index: int = 0, process_count: int = 1,
                 max_pixels: int = image_header.MAX_PIXELS) -> _Batches:
  """This process's evaluation batches, b = batch_size / process_count images each: the host's
  part of timm's eval transform with `data_config` (`eval_crop.FIELDS`: 'image' canvases with
  their resize's coefficients, which `eval_crop.model_input` turns into the model's input in the
  step), 'label', 'mask' and 'index', the image's index in the whole split (-1 for padding,
  whose mask is False). Every process runs the same number of batches. Images over
  `max_pixels` are skipped undecoded, and named; `host_resized` counts those resized on the
  host (too large for the canvas)."""
  if batch_size % process_count:
    raise ValueError(f'the eval batch {batch_size} does not split evenly over {process_count} '
                     f'processes')
  local = batch_size // process_count
  num_batches = math.ceil(max(source.shard_size(i, process_count)
                              for i in range(process_count)) / local)
  start = source.shard_start(process_index, process_count)

  def example(position, record):
    encoded = image_header.refuse_over_limit(record['image'], max_pixels)
    prepared = transforms.eval_example(transforms.decode_rgb(encoded), data_config)
    return {**prepared, 'label': record['label'], 'mask': True, 'position': position,
            'index': tf.cast(start + position, tf.int32)}

  shapes = eval_crop.shapes(data_config)
  # Padding is marked host-resized, so its coefficients are the identity (of zeros).
  padding = tf.data.Dataset.from_tensors({
      **{name: tf.zeros(shapes[name], dtype) for name, dtype in eval_crop.HOST_FIELDS},
      'host_resized': True, 'label': tf.constant(0, tf.int32), 'mask': False,
      'position': tf.constant(-1, tf.int64), 'index': tf.constant(-1, tf.int32)}).repeat()
  dataset = (source.records(process_index, process_count).enumerate()
             .map(example, num_parallel_calls=tf.data.AUTOTUNE)
             .ignore_errors()
             .concatenate(padding)
             .batch(local)
             .take(num_batches)
             .map(lambda batch: eval_coefficients(batch, data_config))
             .prefetch(2)
             .with_options(_options()))
  return _Batches(dataset, num_batches,
                  lambda p: source.describe(process_index, process_count, None, p),
                  lambda p: skip_reason(source, process_index, process_count, None, p,
                                        max_pixels),
                  end_position=source.shard_size(process_index, process_count), covers_end=True)
