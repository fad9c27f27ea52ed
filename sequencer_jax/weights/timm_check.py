"""timm's Sequencer2d beside ours: the reference model of an architecture, and a logit check.

Needs torch and timm (imported when called, never by the rest of the package).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from sequencer_jax.models import SequencerArch, create_model, model_info
from sequencer_jax.weights.torch_keys import (ConversionError, Params, infer_arch,
                                             timm_constructor_args, to_timm_layout)


def timm_sequencer(arch: SequencerArch, num_classes: int = 1000, **kwargs: Any) -> Any:
  """timm's `Sequencer2d` (a torch.nn.Module) with this architecture (2D LSTM models only);
  `kwargs` (e.g. drop_path_rate) go to its constructor."""
  args = timm_constructor_args(arch)
  import timm
  return timm.models.sequencer.Sequencer2d(num_classes=num_classes, **args, **kwargs)


def check_timm_available(name: str) -> None:
  """Raises unless timm can build `name` and torch and timm are importable."""
  arch = model_info(name).arch
  if arch.cell != 'lstm' or arch.vanilla:
    raise ConversionError(f'timm has no model like {name} (it has only the LSTM Sequencer2D), '
                          f'so it cannot be compared with timm')
  try:
    import timm  # noqa: F401
    import torch  # noqa: F401
  except ImportError as e:
    raise ConversionError(f'comparing with timm needs torch and timm installed: {e}') from None


def timm_logit_difference(state_dict: Mapping[str, np.ndarray], name: str, num_classes: int,
                          params: Params, batch: int = 2, seed: int = 0) -> float:
  """Max |logit difference| between timm on `state_dict` and our model on `params`.

  Needs torch and timm; compares pre-logits when the head was replaced.
  """
  import torch

  check_timm_available(name)
  info = model_info(name)
  sd = to_timm_layout(state_dict)
  _, checkpoint_classes = infer_arch(sd)
  reference = timm_sequencer(info.arch, checkpoint_classes).eval()
  reference.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()},
                            strict=True)
  compare_logits = num_classes == checkpoint_classes and num_classes > 0
  if not compare_logits:
    reference.reset_classifier(0)
  x = np.random.RandomState(seed).randn(batch, info.input_size, info.input_size, 3)
  x = x.astype(np.float32)
  with torch.no_grad():
    expected = reference(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  model = create_model(name, num_classes=num_classes)
  logits, feats = jax.jit(model.apply, static_argnames='return_intermediates')(
      {'params': params}, x, return_intermediates=True)
  got = logits if compare_logits else feats['pre_logits']
  return float(np.abs(np.asarray(got) - expected).max())
