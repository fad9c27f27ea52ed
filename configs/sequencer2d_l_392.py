"""Fine-tune Sequencer2D-L at 392 from the 224 weights.

  python convert_torch_weights.py sequencer2d_l.pth $CKPT/sequencer2d_l
  python main.py --config=configs/sequencer2d_l_392.py --workdir=$WORKDIR \
      --config.init_from=$CKPT/sequencer2d_l

Global batch 512, 30 epochs, no warmup or cooldown, cosine from 5e-5 to 1e-6, wd 1e-8, drop
path 0.4, evaluation at 392 with crop_pct 1.0. Expected: 84.6% top-1 (the paper's;
not reproduced here).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'sequencer2d_l'
  config.model.drop_path_rate = 0.4
  config.data.image_size = 392
  config.data.crop_pct = 1.0
  config.global_batch_size = 512
  config.optim.lr = 5e-5
  config.optim.scale_lr_with_batch = False  # 5e-5 is the lr at batch 512 itself.
  config.optim.weight_decay = 1e-8
  config.optim.epochs = 30
  config.optim.warmup_epochs = 0
  config.optim.cooldown_epochs = 0
  config.eval_batch_size = 256
  return config
