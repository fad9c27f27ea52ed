"""The tiny training run the training, reliability and multi-process tests share.

configs/demo.py shrunk to a 2-block model on 16-pixel images of a generated folder of 48 training
and 18 validation images: 3 steps per epoch at batch 16, 2 epochs, a checkpoint every 2 steps.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from configs import demo
from sequencer_jax import sharding
from sequencer_jax.data import synthetic
from sequencer_jax.train import overrides
from sequencer_jax.train.checkpoints import TrainCheckpoints
from sequencer_jax.train.config import build_model, build_optimizer, run_record
from sequencer_jax.train.state import abstract_train_state


def write_dataset(root: str) -> str:
  """The generated folder (48 training and 18 validation images, 16x16) at `root`."""
  synthetic.write_image_folder(root, train_per_class=8, val_per_class=3, size=16, seed=1)
  return root


def tiny_config(dataset: str, **changes: Any) -> ml_collections.ConfigDict:
  """The tiny run on `dataset`, with dotted `changes` (e.g. {'optim.lr': 1e-3}) applied."""
  config = demo.get_config()
  config.data.dataset = dataset
  config.data.image_size = 16
  config.data.canvas_size = 16  # The images are 16 x 16: every crop fits.
  config.model.arch.layers = (1, 1)
  config.model.arch.embed_dims = (16, 32)
  config.model.arch.hidden_sizes = (4, 8)
  config.model.drop_path_rate = 0.1
  config.aug.mixup, config.aug.cutmix = 0.8, 1.0
  config.global_batch_size = 16  # 3 steps per epoch.
  config.eval_batch_size = 8  # 18 images: 3 batches, the last one padded.
  config.optim.epochs = 2
  config.log_every_steps = 2
  config.checkpoint_every_steps = 2
  overrides.apply_overrides(config, changes)
  return config


def restore_params(workdir: str, config: ml_collections.ConfigDict, step: int) -> Any:
  """The parameters of checkpoint `step` of the tiny run in `workdir`, on the host."""
  model = build_model(config)
  optimizer, _ = build_optimizer(config, steps_per_epoch=3)
  target = abstract_train_state(model, optimizer, image_size=16, mesh=sharding.make_mesh(),
                                ema=config.ema_decay is not None)  # Shapes: no init compiled.
  checkpoints = TrainCheckpoints(workdir, run_record(config), keep=10)
  try:
    return jax.device_get(checkpoints.restore(target, step).params)
  finally:
    checkpoints.close()
