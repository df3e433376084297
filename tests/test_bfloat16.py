"""model.dtype = 'bfloat16': bfloat16 compute, float32 parameters and
logits. Causality holds bit for bit (the masks are exact zeros in any
dtype), the bits/dim of the same parameters agree with float32, and so does
training on real data, step by step."""

import functools
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gated_pixelcnn import datasets
from gated_pixelcnn import models
from gated_pixelcnn import pretrained
from gated_pixelcnn import steps
from gated_pixelcnn.influence import causal_order
from gated_pixelcnn.influence import influence

COMMITTED = pretrained.ROOT / 'pretrained' / 'fashion_mnist'


@pytest.mark.parametrize('C', [1, 3])
def test_bfloat16_model_has_no_leak(C):
  model = models.GatedPixelCNN(num_layers=2, features=8 * C, kernel_size=3,
                               first_kernel_size=5, num_channels=C,
                               head_features=8 * C, dtype='bfloat16')
  H, W = 4, 5
  changed = influence(model, H, W, C)
  assert not (changed & ~causal_order(H, W, C)).any()
  # Most earlier sub-pixels still reach each logit through bfloat16.
  assert changed.sum() > 0.5 * causal_order(H, W, C).sum()


def test_bfloat16_keeps_float32_parameters_and_logits():
  model = models.GatedPixelCNN(num_layers=2, features=8, kernel_size=3,
                               first_kernel_size=3, head_features=8,
                               dtype='bfloat16')
  images = np.zeros((1, 4, 4, 1), np.int32)
  variables = model.init(jax.random.PRNGKey(0), images)
  assert {x.dtype for x in jax.tree_util.tree_leaves(variables)} == {
      np.dtype('float32')}
  assert model.apply(variables, images).dtype == np.float32


needs_fashion_mnist = pytest.mark.skipif(
    not os.path.isdir(datasets.DEBIAN_FASHION_MNIST),
    reason='needs Debian package dataset-fashion-mnist')


def train_losses(dtype: str, images: np.ndarray, batch: int) -> np.ndarray:
  """Training bits/dim of each step of a small model trained on ``images``
  in order, ``batch`` at a time, with the default recipe's Adam at 4e-3,
  from the same initial parameters whatever ``dtype``."""
  model = models.GatedPixelCNN(num_layers=3, features=16, kernel_size=3,
                               first_kernel_size=5, head_features=32,
                               dtype=dtype)
  params = model.init(jax.random.PRNGKey(0), images[:1])['params']
  tx = optax.adam(4e-3)
  state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=tx.init(params), ema_params=None,
                           rng=jax.random.PRNGKey(1))
  step = jax.jit(functools.partial(
      steps.train_step, model=model, tx=tx, schedule=lambda _: 4e-3,
      ema_decay=0.0))
  losses = []
  for k in range(0, len(images), batch):
    state, metrics = step(state, {'image': images[k:k + batch]})
    losses.append(metrics['bits_per_dim'])
  return np.asarray(jax.device_get(losses))


@needs_fashion_mnist
def test_bfloat16_training_tracks_float32():
  """300 steps of batch 8 on Fashion-MNIST training images (14x14, every
  second pixel), bfloat16 compute against float32 from the same start:
  the loss falls from about 8 to under 4 bits/dim in both, and the means
  of every 50 steps agree within 0.02 bits/dim (measured: at most 0.006,
  bfloat16 the lower)."""
  path = datasets.find_file(pathlib.Path(datasets.DEBIAN_FASHION_MNIST),
                            'train-images-idx3-ubyte')
  images = datasets.read_idx(path, 3)[:2400, ::2, ::2, None].astype(np.int32)
  f32, bf16 = (train_losses(d, images, 8) for d in ('float32', 'bfloat16'))
  assert f32[0] > 7.5 and bf16[0] > 7.5, (f32[0], bf16[0])  # both 8.17
  f32, bf16 = (x.reshape(6, 50).mean(axis=1) for x in (f32, bf16))
  assert f32[-1] < 4.0 and bf16[-1] < 4.0, (f32, bf16)
  assert np.abs(bf16 - f32).max() < 0.02, (f32, bf16)


@needs_fashion_mnist
def test_bfloat16_bits_per_dim_match_float32():
  """The committed model's bits/dim on 100 test images, computed in
  bfloat16 and float32 from the same parameters: within 0.005 bits/dim
  (measured: 2.72550 against 2.72499)."""
  model = pretrained.load(COMMITTED)
  images = pretrained.first_test_images(model.config, 100)
  bpd = {}
  for dtype in ('float32', 'bfloat16'):
    config = model.config.model.copy_and_resolve_references()
    config.dtype = dtype
    bpd[dtype] = pretrained.subset_bits_per_dim(
        models.create_model(config), model.params, images)
  assert abs(bpd['bfloat16'] - bpd['float32']) < 0.005, bpd


@needs_fashion_mnist
@pytest.mark.parametrize('impl', ['im2col', 'taps'])
def test_bfloat16_conv_impls_match_xla_conv(impl):
  """The committed model in bfloat16 with each way of computing the
  convolutions: bits/dim on 50 test images within 0.005 of XLA's
  convolution (each rounds its sums to bfloat16 once)."""
  model = pretrained.load(COMMITTED)
  images = pretrained.first_test_images(model.config, 50)
  config = model.config.model.copy_and_resolve_references()
  config.dtype = 'bfloat16'
  bpd = {i: pretrained.subset_bits_per_dim(
      models.create_model(config, conv_impl=i), model.params, images, 50)
         for i in ('conv', impl)}
  assert abs(bpd[impl] - bpd['conv']) < 0.005, bpd
