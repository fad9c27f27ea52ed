"""Models in the local Hugging Face cache (`hf-hub:timm/sequencer2d_s.in1k`), never downloaded.

timm's hub repositories hold the weights (`model.safetensors`, or `pytorch_model.bin`) and a
`config.json` with timm's `pretrained_cfg` and, for newer uploads, the label names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from sequencer_jax.labels import readable_names
from sequencer_jax.models import DataConfig

HUB_PREFIX = 'hf-hub:'
WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')


class HubCacheError(ValueError):
  """A hub model that is not in the local cache, or whose cached files are not usable."""


def _cached(repo_id: str, filename: str, revision: str | None) -> str | None:
  import huggingface_hub
  path = huggingface_hub.try_to_load_from_cache(repo_id, filename, revision=revision)
  return path if isinstance(path, str) and os.path.isfile(path) else None


def cached_files(source: str) -> tuple[str, dict[str, Any]]:
  """The cached weight file of `hf-hub:<repo>[@revision]` and its config.json ({} when not
  cached)."""
  repo_id, _, revision = source.removeprefix(HUB_PREFIX).partition('@')
  if repo_id.count('/') != 1 or not all(repo_id.split('/')):
    raise HubCacheError(f'{source}: a hub source is hf-hub:<owner>/<name>, e.g. '
                        f'hf-hub:timm/sequencer2d_s.in1k')
  weights = next((p for p in (_cached(repo_id, f, revision or None) for f in WEIGHT_FILES) if p),
                 None)
  if weights is None:
    import huggingface_hub
    cache = huggingface_hub.constants.HF_HUB_CACHE
    download = f"huggingface_hub.snapshot_download('{repo_id}')"
    raise HubCacheError(f'{source} is not in the Hugging Face cache ({cache}); nothing is '
                        f'downloaded at run time. Download it once with: python -c "import '
                        f'huggingface_hub; {download}"')
  config_path = _cached(repo_id, 'config.json', revision or None)
  if config_path is None:
    return weights, {}
  try:
    with open(config_path) as f:
      return weights, json.load(f)
  except (OSError, ValueError) as e:
    raise HubCacheError(f'{source}: its cached config.json cannot be read: {e}') from None


def _label_list(values: Any, num_classes: int) -> tuple[str, ...] | None:
  """timm's `label_names`: a list, or an {index: name} dict, of `num_classes` names."""
  if isinstance(values, Mapping):
    values = [values.get(str(i), values.get(i)) for i in range(num_classes)]
  if not isinstance(values, (list, tuple)) or len(values) != num_classes or None in values:
    return None
  return tuple(str(v) for v in values)


def read_hub_config(config: Mapping[str, Any], num_classes: int
                    ) -> tuple[DataConfig | None, tuple[str, ...] | None]:
  """The data config and class names a hub config.json gives (None for what it lacks).

  timm's `label_names` are unique ids (WordNet ids for ImageNet) and its `label_descriptions`
  map them to readable names; ImageNet-1k ids without descriptions get the package's names.
  """
  pretrained_cfg = dict(config.get('pretrained_cfg') or {})
  data_config = DataConfig.from_pretrained_cfg(pretrained_cfg) if pretrained_cfg else None
  names = _label_list(config.get('label_names', pretrained_cfg.get('label_names')), num_classes)
  if names is None:
    return data_config, None
  descriptions = config.get('label_descriptions', pretrained_cfg.get('label_descriptions'))
  if isinstance(descriptions, Mapping):
    names = tuple(str(descriptions.get(n, n)) for n in names)
  return data_config, readable_names(names)
