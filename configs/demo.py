"""The offline demo: a small Sequencer2D learns six generated pattern classes on the CPU.

  python main.py --config=configs/demo.py --workdir=/tmp/sequencer-demo

Needs no download: the first run writes 6 x 400 training and 6 x 50 validation JPEGs (48x48) to
<workdir>/data, then trains through the real pipeline (folder reader, RandAugment, erasing,
sharded step, checkpoints, evaluation, TensorBoard; Mixup/CutMix are off). Expected: >= 90%
validation top-1 (the measured accuracy and time are in the README's table of figures).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model.arch = ml_collections.ConfigDict(dict(
      layers=(2, 2), patch_sizes=(4, 2), embed_dims=(32, 64), hidden_sizes=(8, 16)))
  config.model.num_classes = 6
  config.model.drop_path_rate = 0.0
  config.model.dtype = 'float32'
  config.data.dataset = ''  # Empty: <workdir>/data, generated on the first run.
  config.evals.val.split = 'val'
  config.data.image_size = 48
  config.data.canvas_size = 48  # The generated images are 48 x 48: every crop fits.
  config.data.crop_pct = 1.0
  config.aug.scale = (0.35, 1.0)
  config.aug.auto_augment = 'rand-m5-mstd0.5-inc1'
  config.aug.mixup = 0.0
  config.aug.cutmix = 0.0
  config.aug.reprob = 0.1
  config.global_batch_size = 64
  config.eval_batch_size = 128
  config.optim.lr = 2e-3
  config.optim.scale_lr_with_batch = False
  config.optim.weight_decay = 0.05
  config.optim.epochs = 14
  config.optim.warmup_epochs = 1
  config.optim.cooldown_epochs = 0
  config.optim.per_step_lr = True
  config.log_every_steps = 10
  config.checkpoint_every_steps = 100
  config.keep_checkpoints = 2
  config.demo = ml_collections.ConfigDict(dict(
      train_per_class=400, val_per_class=50, image_size=48, seed=0))
  return config
