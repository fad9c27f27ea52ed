"""What a run does before its first step: the workdir checked, the demo's images generated, and the
model record and the resolved config written into the workdir (process 0)."""

from __future__ import annotations

import json
import os

import jax
import ml_collections
from jax.experimental import multihost_utils

from sequencer_jax import storage
from sequencer_jax.data import sources, synthetic
from sequencer_jax.labels import readable_names
from sequencer_jax.models import DataConfig, Sequencer
from sequencer_jax.train.config import ConfigError
from sequencer_jax.weights import ModelRecord
from sequencer_jax.weights.workdir import MODEL_JSON


def check_workdir(workdir: str) -> None:
  """Refuses a workdir that exists but is not a directory."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f'the workdir {workdir} is a file, not a directory; give a directory')


def prepare_demo_data(config: ml_collections.ConfigDict, workdir: str) -> None:
  """configs/demo.py with its default (empty) dataset: the generated images, written once to
  <workdir>/data. A dataset path the user gave is never written to."""
  demo = config.get('demo')
  if demo is None or config.data.dataset:
    return
  config.data.dataset = os.path.join(os.path.abspath(workdir), 'data')
  if not os.path.isdir(config.data.dataset) and jax.process_index() == 0:
    synthetic.write_image_folder(config.data.dataset, train_per_class=demo.train_per_class,
                                 val_per_class=demo.val_per_class, size=demo.image_size,
                                 seed=demo.seed)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('demo data written')


def model_record(config: ml_collections.ConfigDict, model: Sequencer,
                 source: sources.Source) -> ModelRecord:
  """What the run's weights are: the architecture, the training split's class names and the
  evaluation transform of `config.data`."""
  return ModelRecord(model.arch, model.num_classes, readable_names(source.class_names),
                     DataConfig(config.data.image_size, config.data.crop_pct))


def write_model_record(record: ModelRecord, workdir: str) -> None:
  """`<workdir>/model.json`, which export and `load_pretrained(workdir)` read."""
  if jax.process_index() == 0:
    text = json.dumps(record.to_json(), indent=2)
    path = os.path.join(workdir, MODEL_JSON)
    tmp = f'{path}.tmp'
    with storage.writing('the model record', path):
      with open(tmp, 'w') as f:
        f.write(text)
      os.replace(tmp, path)


def write_config(config: ml_collections.ConfigDict, workdir: str, step: int,
                 learning_rate: float) -> None:
  """Saves the resolved config, with the peak learning rate actually used (after any batch
  scaling) as `resolved.learning_rate`; a resumed run with a changed config gets a second file."""
  if jax.process_index() != 0:
    return
  resolved = json.loads(config.to_json_best_effort())
  resolved['resolved'] = {'learning_rate': learning_rate}
  text = json.dumps(resolved, indent=2, sort_keys=True)
  path = os.path.join(workdir, 'config.json')
  if os.path.exists(path):
    with open(path) as f:
      if f.read() == text:
        return
    path = os.path.join(workdir, f'config.resumed_at_step_{step}.json')
  with storage.writing("the run's config", path), open(path, 'w') as f:
    f.write(text)
