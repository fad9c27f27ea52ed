"""FGSM and PGD against a plain-torch reference written here (advertorch's algorithms): the same
random-weight timm model, the same [0, 1] images and the same PGD start. Perturbations equal on
>= 99.9% of pixels and adversarial top-1 equal on >= 98% of images (sign flips where a gradient
is near zero are the only expected difference; CPU, fp32, highest matmul precision)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import sequencer_jax
from sequencer_jax import evaluate as evaluate_command
from sequencer_jax import sharding
from sequencer_jax.evaluation import attacks, runner, suites
from sequencer_jax.labels import imagenet1k_wnids
from sequencer_jax.models import DataConfig, Sequencer, SequencerArch
from sequencer_jax.weights.timm_check import timm_sequencer
from sequencer_jax.weights.torch_keys import torch_to_flax
from random_params import random_variables
from torch_reference import randomize_, state_dict_numpy

ARCH = SequencerArch(layers=(1, 1), patch_sizes=(4, 2), embed_dims=(16, 32), hidden_sizes=(4, 8))
CLASSES, N, SIZE = 10, 32, 16
CONFIG = DataConfig(SIZE, 1.0)
MEAN, STD = np.asarray(CONFIG.mean, np.float32), np.asarray(CONFIG.std, np.float32)


@pytest.fixture(scope='module')
def models():
  reference = randomize_(timm_sequencer(ARCH, CLASSES), seed=7).eval()
  model = Sequencer(ARCH, num_classes=CLASSES)
  return reference, model, torch_to_flax(state_dict_numpy(reference), model)


@pytest.fixture(scope='module')
def batch():
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (N, SIZE, SIZE, 3)).astype(np.float32) / 255
  return pixels, rng.integers(0, CLASSES, N).astype(np.int32), np.arange(N, dtype=np.int32)


def _torch_attack(reference, pixels, labels, attack, start):
  """advertorch's GradientSignAttack / LinfPGDAttack(rand_init=True), in plain torch."""
  x = torch.from_numpy(pixels).permute(0, 3, 1, 2)
  y = torch.from_numpy(labels).long()
  mean, std = torch.from_numpy(MEAN)[:, None, None], torch.from_numpy(STD)[:, None, None]

  def grad(z):
    z = z.detach().requires_grad_(True)
    loss = F.cross_entropy(reference((z - mean) / std), y, reduction='sum')
    return torch.autograd.grad(loss, z)[0]

  eps = attack.eps / 255
  if attack.kind == 'fgsm':
    adv = torch.clamp(x + eps * grad(x).sign(), 0, 1)
  else:
    delta = torch.clamp(x + torch.from_numpy(start).permute(0, 3, 1, 2), 0, 1) - x
    for _ in range(attack.steps):
      delta = torch.clamp(delta + attack.step_size / 255 * grad(x + delta).sign(), -eps, eps)
      delta = torch.clamp(x + delta, 0, 1) - x
    adv = torch.clamp(x + delta, 0, 1)
  with torch.no_grad():
    predicted = reference((adv - mean) / std).argmax(1).numpy()
  return adv.permute(0, 2, 3, 1).numpy(), predicted


def _loss(model, params):
  def summed_cross_entropy(pixels, labels):
    logits = model.apply({'params': params}, (pixels - MEAN) / STD)
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], -1).sum()
  return summed_cross_entropy


@pytest.mark.parametrize('attack', [attacks.Attack('fgsm', eps=4.0),
                                    attacks.Attack('pgd', eps=4.0, steps=3, step_size=2.0,
                                                   seed=5)], ids=['fgsm', 'pgd'])
def test_attacks_equal_the_torch_reference(models, batch, attack):
  reference, model, params = models
  pixels, labels, index = batch
  start = np.array(attack.random_start(jnp.asarray(index), pixels.shape))
  want, want_top1 = _torch_attack(reference, pixels, labels, attack, start)
  perturb = jax.jit(lambda x, y, i: attacks.perturb(attack, _loss(model, params), x, y, i))
  got = np.asarray(perturb(pixels, labels, index))
  assert np.mean(np.abs(got - want) <= 1e-6) >= 0.999
  assert np.abs(got - pixels).max() <= attack.eps / 255 + 1e-6
  assert 0 <= got.min() <= got.max() <= 1
  got_top1 = np.asarray(model.apply({'params': params}, (got - MEAN) / STD)).argmax(-1)
  assert np.mean(got_top1 == want_top1) >= 0.98
  # The attack does its job: the loss rises.
  loss = _loss(model, params)
  assert loss(got, labels) > loss(pixels, labels)


def test_pgd_starts_are_seeded_per_image():
  attack = attacks.Attack('pgd', seed=3)
  a = np.asarray(attack.random_start(jnp.arange(4), (4, 2, 2, 3)))
  b = np.asarray(attack.random_start(jnp.asarray([2, 3]), (2, 2, 2, 3)))
  np.testing.assert_array_equal(a[2:], b)  # The same image gets the same start in any batch.
  assert np.abs(a).max() <= 1 / 255 and not np.array_equal(a[0], a[1])
  other = np.asarray(attacks.Attack('pgd', seed=4).random_start(jnp.arange(4), (4, 2, 2, 3)))
  assert not np.array_equal(a, other)
  with pytest.raises(ValueError, match='unknown attack'):
    attacks.Attack('cw')
  with pytest.raises(ValueError, match='steps 0 >= 1'):
    attacks.Attack('pgd', steps=0)


def test_the_predict_step_attacks_through_the_normalisation(models, batch):
  """The evaluation step, fed normalised images, predicts what torch predicts on its FGSM
  images."""
  reference, model, params = models
  pixels, labels, index = batch
  attack = attacks.Attack('fgsm', eps=4.0)
  _, want_top1 = _torch_attack(reference, pixels, labels, attack, None)
  mesh = sharding.make_mesh()
  step = runner.make_predict_step(model, mesh=mesh, params_sharding=sharding.replicated(mesh),
                                  attack=attack, data_config=CONFIG,
                                  inputs=lambda batch: batch['image'])
  out = step(params, sharding.global_batch(
      {'image': (pixels - MEAN) / STD, 'label': labels, 'index': index,
       'mask': np.ones(N, bool)}, mesh))
  got_top1 = np.asarray(out['top5'])[:, 0]
  assert np.mean(got_top1 == want_top1) >= 0.98
  clean = np.asarray(model.apply({'params': params}, (pixels - MEAN) / STD)).argmax(-1)
  assert np.mean(got_top1 != clean) > 0.2  # It attacked.


@pytest.mark.slow  # End to end (a command, or a process of its own).
def test_evaluate_on_adversarial_images_says_so_and_repeats(tmp_path, capsys):
  model = Sequencer(ARCH, num_classes=1000)
  params = random_variables(model, np.zeros((1, SIZE, SIZE, 3), np.float32))['params']
  sequencer_jax.save_model(str(tmp_path / 'm'),
                           sequencer_jax.ModelRecord(ARCH, 1000, None, CONFIG), params)
  rng = np.random.default_rng(1)
  for wnid in imagenet1k_wnids()[:2]:
    (tmp_path / 'val' / wnid).mkdir(parents=True)
    for i in range(3):
      Image.fromarray(rng.integers(0, 256, (20, 20, 3), np.uint8)).save(
          tmp_path / 'val' / wnid / f'{i}.png')
  argv = ['--model', str(tmp_path / 'm'), '--eval', f'imagenet={tmp_path / "val"}',
          '--batch-size', '4', '--attack', 'pgd', '--adv-steps', '2', '--seed', '3']
  assert evaluate_command.main([*argv, '--format', 'json']) == 0
  result = json.loads(capsys.readouterr().out)['imagenet']
  assert {k: result[k] for k in ('attack', 'eps', 'steps', 'step_size', 'seed')} == {
      'attack': 'pgd', 'eps': 1.0, 'steps': 2, 'step_size': 0.5, 'seed': 3}
  assert result['images'] == 6
  assert evaluate_command.main([*argv, '--format', 'json']) == 0
  assert json.loads(capsys.readouterr().out)['imagenet'] == result  # Seeded: it repeats.
  assert evaluate_command.main(argv) == 0
  assert 'on adversarial images: attack pgd, eps 1.0, steps 2' in capsys.readouterr().out
  with pytest.raises(SystemExit):
    evaluate_command.main([*argv, '--adv-steps', '0'])
  assert 'steps 0 >= 1' in capsys.readouterr().err


def test_real_is_attacked_against_each_images_label(tmp_path, capsys):
  """ReaL's images carry their ImageNet label when sorted into WordNet-id folders; flat ones
  carry none, and an attack on them is refused in one line."""
  wnid = imagenet1k_wnids()[9]
  for folder in (tmp_path / 'sorted' / wnid, tmp_path / 'flat'):
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / 'ILSVRC2012_val_00000002.JPEG')
  assert suites.open_eval('real', 'real', str(tmp_path / 'sorted')).source.split.labels == (9,)
  assert not suites.open_eval('real', 'real', str(tmp_path / 'flat')).labelled
  assert evaluate_command.main(['--model', 'unused', '--eval', f'real={tmp_path / "flat"}',
                                '--attack', 'fgsm']) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'flat ReaL images have none' in err
