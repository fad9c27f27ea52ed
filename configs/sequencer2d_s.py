"""Sequencer2D-S from scratch on ImageNet-1k, the paper's recipe.

  python main.py --config=configs/sequencer2d_s.py --workdir=$WORKDIR \
      --config.data.data_dir=$TFDS_DATA_DIR

310 epochs (300 cosine + 10 cooldown) at global batch 2048, AdamW lr 2e-3, wd 0.05, warmup 20
epochs from 1e-6, drop path 0.1, RandAugment m9 mstd0.5, RandomErasing 0.25, Mixup 0.8 / CutMix
1.0, label smoothing 0.1, bf16 compute. Expected: 82.3% top-1 (the paper's; not reproduced here).
"""

from configs import default


def get_config():
  return default.get_config()
