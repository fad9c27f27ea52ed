"""A model as a timm Hub repository folder, what `timm.create_model('hf-hub:<owner>/<name>',
pretrained=True)` loads once the folder is uploaded:

  model.safetensors  the weights in timm's key layout;
  config.json        timm's format: `architecture` (a timm model name), `num_classes`, the label
                     names, `pretrained_cfg` (the data config) and, for an architecture that is
                     not one of timm's registered ones, `model_args` for timm's `Sequencer2d`;
  README.md          a model card: architecture, parameters, data config, classes, provenance
                     and the evaluation results the source records.

The folder is written beside its destination under a temporary name and renamed when complete,
so a failure leaves nothing under the final name; an existing destination is never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import numpy as np

from sequencer_jax.labels import imagenet1k_names, imagenet1k_wnids
from sequencer_jax.models import model_info
from sequencer_jax.weights.model_format import ModelRecord
from sequencer_jax.weights.torch_keys import TIMM_MODELS, flax_to_torch, timm_constructor_args

BASE_ARCHITECTURE = 'sequencer2d_s'  # What `model_args` are relative to for other shapes.
CITATION = """@inproceedings{tatsunami2022sequencer,
  title={Sequencer: Deep LSTM for Image Classification},
  author={Tatsunami, Yuki and Taki, Masato},
  booktitle={Advances in Neural Information Processing Systems},
  year={2022}
}"""


def _label_fields(class_names: tuple[str, ...] | None) -> dict[str, Any]:
  """timm's label fields: ImageNet-1k as its hub configs give it (WordNet ids, described)."""
  if class_names is None:
    return {}
  if class_names == imagenet1k_names():
    wnids = imagenet1k_wnids()
    return {'label_names': list(wnids), 'label_descriptions': dict(zip(wnids, class_names))}
  return {'label_names': list(class_names)}


def timm_config(record: ModelRecord) -> dict[str, Any]:
  """The config.json of `record`'s model; architectures timm cannot build raise a
  ConversionError."""
  args = timm_constructor_args(record.arch)
  architecture = record.name if record.name in TIMM_MODELS else BASE_ARCHITECTURE
  base = timm_constructor_args(model_info(architecture).arch)
  model_args = {key: value for key, value in args.items() if value != base[key]}
  config: dict[str, Any] = {'architecture': architecture, 'num_classes': record.num_classes,
                            'num_features': record.arch.embed_dims[-1], 'global_pool': 'avg'}
  if model_args:
    config['model_args'] = model_args
  config.update(_label_fields(record.class_names))
  config['pretrained_cfg'] = {
      **record.data_config.to_pretrained_cfg(), 'crop_mode': 'center',
      'num_classes': record.num_classes, 'pool_size': None, 'fixed_input_size': True,
      'first_conv': 'stem.proj', 'classifier': 'head.fc', 'custom_load': False}
  return config


def _architecture_line(config: dict[str, Any]) -> str:
  if 'model_args' not in config:
    return f"{config['architecture']} (timm's own)"
  args = ', '.join(f'{key}={value}' for key, value in config['model_args'].items())
  return f"{config['architecture']} with {args}"


def _classes_line(record: ModelRecord) -> str:
  if record.class_names == imagenet1k_names():
    return f'{record.num_classes} (ImageNet-1k)'
  if record.class_names is None:
    return f'{record.num_classes} (names not recorded)'
  shown = ', '.join(record.class_names[:5]) + (', ...' if record.num_classes > 5 else '')
  return f'{record.num_classes} ({shown})'


def model_card(record: ModelRecord, config: dict[str, Any], params: Any, title: str) -> str:
  """The README.md of the folder: Hugging Face's front matter, then timm's model card sections."""
  count = sum(int(np.prod(np.shape(p))) for p in jax.tree.leaves(params))
  data = record.data_config
  details = [
      ('Model type', 'Image classification'),
      ('Architecture', _architecture_line(config)),
      ('Parameters (M)', f'{count / 1e6:.2f}'),
      ('Classes', _classes_line(record)),
      ('Image size', f'{data.input_size} x {data.input_size}'),
      ('Data config', f'resize to {data.input_size} / crop_pct {data.crop_pct} '
                      f'({data.interpolation}), centre crop, mean {list(data.mean)}, '
                      f'std {list(data.std)}'),
      ('Papers', 'Sequencer: Deep LSTM for Image Classification: '
                 'https://arxiv.org/abs/2205.01972'),
  ]
  lines = ['---', 'tags:', '- image-classification', '- timm', '- sequencer-jax',
           'library_name: timm', 'pipeline_tag: image-classification', '---',
           f'# Model card for {title}', '',
           'A Sequencer2D image classifier, written by sequencer-jax (JAX/Flax) in timm\'s '
           'format.', '', '## Model Details']
  lines += [f'- **{key}:** {value}' for key, value in details]
  lines.append('- **Provenance:**')
  lines += [f'  - {key}: {value}' for key, value in record.provenance.items()
            if key != 'validation_top1'] or ['  - not recorded']
  if 'validation_top1' in record.provenance:
    lines += ['', '## Evaluation',
              f"- top-1 on the training run's validation set, at this checkpoint: "
              f"{100 * record.provenance['validation_top1']:.2f}%"]
  lines += ['', '## Model Usage', '```python', 'import timm', '',
            f"model = timm.create_model('hf-hub:<owner>/{title}', pretrained=True).eval()",
            'config = timm.data.resolve_data_config({}, model=model)',
            'transform = timm.data.create_transform(**config)', '```', '',
            'In JAX: `sequencer_jax.load_pretrained(\'hf-hub:<owner>/' + title + '\')`.', '',
            '## Citation', '```bibtex', CITATION, '```', '']
  return '\n'.join(lines)


def write_hub_folder(record: ModelRecord, params: Any, dst: str) -> dict[str, Any]:
  """Writes `params` (described by `record`) as the new timm Hub folder `dst`; returns its
  config.json. Nothing is written when timm cannot build the architecture."""
  dst = os.path.normpath(dst)
  if os.path.exists(dst):
    raise FileExistsError(f'{dst} already exists; refusing to overwrite it')
  config = timm_config(record)
  from safetensors.numpy import save_file
  state_dict = flax_to_torch(jax.device_get(params), 'timm')
  tmp = f'{dst}.tmp-{os.getpid()}'
  os.makedirs(tmp)
  try:
    save_file(state_dict, os.path.join(tmp, 'model.safetensors'), metadata={'format': 'pt'})
    with open(os.path.join(tmp, 'config.json'), 'w') as f:
      json.dump(config, f, indent=2)
    with open(os.path.join(tmp, 'README.md'), 'w') as f:
      f.write(model_card(record, config, params, os.path.basename(dst)))
    os.rename(tmp, dst)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)
  return config
