"""Shared defaults: Sequencer2D-S trained from scratch on ImageNet-1k with the paper's recipe.

Every field that mirrors a timm 0.5.4 train.py flag names it; the others say what they do. The
variant configs (sequencer2d_s.py, ...) start from `get_config()` here and change what differs.
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """The paper's ImageNet-1k recipe for Sequencer2D-S (global batch 2048)."""
  config = ml_collections.ConfigDict()
  config.seed = 42  # --seed

  config.model = ml_collections.ConfigDict()
  config.model.name = 'sequencer2d_s'  # --model
  # SequencerArch fields that replace the registered ones (e.g. layers=(2, 2)); {} for none.
  config.model.arch = ml_collections.ConfigDict()
  config.model.num_classes = 1000  # --num-classes
  config.model.drop_path_rate = 0.1  # --drop-path (linear per-block schedule)
  # --drop: the MLP dropout, as the original model's drop_rate (timm 1.0 calls it proj_drop_rate;
  # its drop_rate is a dropout before the head, which is not configured here).
  config.model.drop_rate = 0.0
  config.model.dtype = 'bfloat16'  # --native-amp: bf16 compute, f32 parameters; 'float32': off
  # What runs the token mixer's recurrences: 'auto' (per_direction on the CPU; on GPU/TPU fused_vjp
  # for LSTMs, fused for the GRU/RNN ablations), 'per_direction', 'fused', 'fused_vjp' or 'pallas'
  # (Pallas kernels for the time loop). None changes the parameters or the results beyond float
  # rounding.
  config.model.rnn_impl = 'auto'
  config.model.remat = False  # Recompute each block in the backward pass to save memory.

  config.data = ml_collections.ConfigDict()
  config.data.dataset = 'imagenet2012'  # A TFDS name, or the root of an extracted image folder.
  config.data.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS data_dir
  config.data.train_split = 'train'
  config.data.image_size = 224  # --img-size
  config.data.crop_pct = 0.875  # --crop-pct (evaluation)
  # Side of the uint8 canvas that carries each training crop to the device, where it is resized:
  # every crop of an image up to 512 x 512 fits (ImageNet's are mostly 500 on the longer side);
  # a larger crop is resized on the host. At least image_size; small-image datasets use less.
  config.data.canvas_size = 512
  # Images whose header declares more pixels are skipped undecoded and named (PIL's limit).
  config.data.max_pixels = 89_478_485

  config.aug = ml_collections.ConfigDict()
  config.aug.scale = (0.08, 1.0)  # --scale
  config.aug.ratio = (3 / 4, 4 / 3)  # --ratio
  config.aug.interpolation = 'random'  # --train-interpolation
  config.aug.hflip = 0.5  # --hflip
  config.aug.auto_augment = 'rand-m9-mstd0.5-inc1'  # --aa ('' or None: off)
  config.aug.color_jitter = 0.4  # --color-jitter (only when --aa is off)
  config.aug.reprob = 0.25  # --reprob
  config.aug.remode = 'pixel'  # --remode (only 'pixel')
  config.aug.recount = 1  # --recount (only 1)
  config.aug.fused_decode = True  # Decode only the crop window of a JPEG.
  config.aug.mixup = 0.8  # --mixup
  config.aug.cutmix = 1.0  # --cutmix
  config.aug.mixup_prob = 1.0  # --mixup-prob
  config.aug.mixup_switch_prob = 0.5  # --mixup-switch-prob
  # Images per Mixup/CutMix draw: the original's per-GPU batch (-b 256), whatever the devices.
  config.aug.mixup_group_size = 256
  config.aug.smoothing = 0.1  # --smoothing

  config.optim = ml_collections.ConfigDict()
  config.optim.lr = 2e-3  # --lr, at the reference batch below
  config.optim.scale_lr_with_batch = True  # lr * global_batch / reference_batch
  config.optim.reference_batch = 2048
  config.optim.warmup_lr = 1e-6  # --warmup-lr
  config.optim.min_lr = 1e-6  # --min-lr
  config.optim.epochs = 300  # --epochs
  config.optim.warmup_epochs = 20  # --warmup-epochs
  config.optim.cooldown_epochs = 10  # --cooldown-epochs
  # True: the lr per step (timm >= 0.9's --sched-on-updates); False: once per epoch, as timm 0.5.4.
  config.optim.per_step_lr = False
  config.optim.weight_decay = 0.05  # --weight-decay (parameters of 2 or more dimensions)
  config.optim.b1 = 0.9  # --opt-betas
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8  # --opt-eps
  config.optim.clip_grad = ml_collections.FieldReference(None, field_type=float)  # --clip-grad

  config.global_batch_size = 2048  # -b 256 on 8 GPUs
  config.grad_accum_steps = 1  # Micro-batches per step: the same update with less memory.
  # --model-ema-decay (None: no EMA weights).
  config.ema_decay = ml_collections.FieldReference(None, field_type=float)
  config.fsdp = False  # Shard parameters and optimiser state over the devices.
  config.eval_batch_size = 1024
  # Named evaluations, all run at every evaluation and by eval_only: a dataset ('' for
  # data.dataset; a TFDS name or a folder), its split, and a metric: 'accuracy' (top-1/top-5/loss
  # in the dataset's own classes) or an ImageNet suite of `python -m sequencer_jax.evaluate`
  # (imagenet, real, imagenet_v2, imagenet_sketch, imagenet_a, imagenet_r, imagenet_c).
  config.evals = ml_collections.ConfigDict({'val': ml_collections.ConfigDict(
      {'dataset': '', 'split': 'validation', 'metric': 'accuracy'})})
  config.best_eval = 'val'  # The evaluation whose top-1 (its EMA's, with EMA) picks best/.
  config.eval_every_epochs = 1
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000  # Also at the end of every epoch.
  config.keep_checkpoints = 3  # The newest k; the best by top-1 is kept apart.
  config.init_from = ''  # Any model source: model directory, workdir, PyTorch file, hf-hub:...
  config.eval_only = False
  return config
