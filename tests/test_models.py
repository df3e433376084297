"""Models: normalisation, paper size, bfloat16, construction and bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default as default_config
from configs import imagenet64
from gated_pixelcnn import layers
from gated_pixelcnn import likelihood
from gated_pixelcnn import models


def _init(model, images, **kw):
  return model.init(jax.random.PRNGKey(0), images, **kw)


@pytest.mark.parametrize('name', ['gated_pixelcnn', 'pixelcnn'])
def test_two_pixel_grayscale_distribution_sums_to_one(name):
  model = models.create_model(dict(
      name=name, num_layers=2, features=8, kernel_size=3,
      first_kernel_size=3, num_channels=1, num_classes=0, head_features=8,
      dtype='float32'))
  a, b = np.meshgrid(np.arange(256), np.arange(256), indexing='ij')
  images = jnp.asarray(np.stack([a, b], -1).reshape(-1, 1, 2, 1), jnp.int32)
  variables = _init(model, images[:1])
  logp = model.apply(variables, images)
  total = np.exp(np.asarray(likelihood.log_prob(logp, images), np.float64))
  assert abs(total.sum() - 1.0) < 1e-4


def test_one_pixel_rgb_red_then_green_sums_to_one():
  model = models.GatedPixelCNN(num_layers=2, features=12, kernel_size=3,
                               first_kernel_size=3, num_channels=3,
                               head_features=12)
  r, g = np.meshgrid(np.arange(256), np.arange(256), indexing='ij')
  images = np.stack([r, g, np.zeros_like(r)], -1).reshape(-1, 1, 1, 3)
  images = jnp.asarray(images, jnp.int32)
  variables = _init(model, images[:1])
  logp = jax.nn.log_softmax(model.apply(variables, images), axis=-1)
  logp = np.asarray(logp, np.float64).reshape(-1, 3, 256)
  idx = np.arange(len(images))
  log_r = logp[idx, 0, r.reshape(-1)]
  log_g_given_r = logp[idx, 1, g.reshape(-1)]
  assert abs(np.exp(log_r + log_g_given_r).sum() - 1.0) < 1e-4


def _gated_param_count(L, p, k, k0, C, head, classes=0):
  """The Gated PixelCNN's parameter count, written out layer by layer."""
  def block(k, inputs, residual):
    vertical = (k // 2 + 1) * k * inputs * 2 * p + 2 * p
    horizontal = (k // 2 + 1) * inputs * 2 * p + 2 * p
    link = 2 * p * 2 * p                   # no bias: the h conv has one
    skip = p * p + p
    res = p * p + p if residual else 0
    cond = classes * 4 * p
    return vertical + horizontal + link + skip + res + cond
  total = block(k0, C, residual=L > 1)
  total += sum(block(k, p, residual=i < L - 1) for i in range(1, L))
  total += p * head + head + head * C * 256 + C * 256
  return total


def _count(model, image_shape, **kw):
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0),
                         jnp.zeros((1, *image_shape), jnp.int32), **kw))
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes))


def test_paper_size_parameter_count():
  config = imagenet64.get_config()
  assert (config.model.num_layers, config.model.features,
          config.model.kernel_size) == (20, 384, 5)
  model = models.create_model(config.model)
  count = _count(model, (64, 64, 3))
  expected = _gated_param_count(20, 384, 5, 5, 3, 768)
  assert count == expected
  # A conv layer has as many weights as multiply-adds per pixel: about
  # 42p^2 per gated layer in the cost model, so about 124M for 20 layers.
  assert abs(count / (42 * 384**2 * 20) - 1) < 0.05


@pytest.mark.parametrize('L,classes', [(1, 0), (3, 10)])
def test_small_parameter_count_with_classes(L, classes):
  model = models.GatedPixelCNN(num_layers=L, features=6, kernel_size=3,
                               first_kernel_size=7, num_channels=3,
                               num_classes=classes, head_features=9)
  labels = {'labels': jnp.zeros((1,), jnp.int32)} if classes else {}
  assert _count(model, (4, 4, 3), **labels) == _gated_param_count(
      L, 6, 3, 7, 3, 9, classes)


def test_bfloat16_close_to_float32():
  config = default_config.get_model_config()
  images = jnp.asarray(
      np.random.default_rng(0).integers(0, 256, (2, 12, 12, 1)), jnp.int32)
  f32 = models.create_model(config)
  variables = _init(f32, images)
  config.dtype = 'bfloat16'
  bf16 = models.create_model(config)
  logits32 = f32.apply(variables, images)
  logits16 = bf16.apply(variables, images)
  assert logits16.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits16)).all()
  bpd32 = likelihood.bits_per_dim(logits32, images)
  bpd16 = likelihood.bits_per_dim(logits16, images)
  np.testing.assert_allclose(bpd16, bpd32, rtol=2e-2)
  assert not np.array_equal(np.asarray(logits16), np.asarray(logits32))


def test_log_prob_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 2, 4, 3, 256)).astype(np.float32)
  images = rng.integers(0, 256, (3, 2, 4, 3))
  shifted = logits - logits.max(-1, keepdims=True)
  logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  expected = np.take_along_axis(logp, images[..., None], -1).sum((1, 2, 3, 4))
  got = likelihood.log_prob(jnp.asarray(logits), jnp.asarray(images))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  bpd = likelihood.bits_per_dim(jnp.asarray(logits), jnp.asarray(images))
  np.testing.assert_allclose(bpd, -expected / (2 * 4 * 3 * np.log(2)),
                             rtol=1e-5)


def test_initial_bits_per_dim_near_uniform():
  # Zero-initialised output biases and small logits: about 8 bits/dim.
  model = models.create_model(default_config.get_model_config())
  images = jnp.zeros((1, 8, 8, 1), jnp.int32)
  bpd = likelihood.bits_per_dim(model.apply(_init(model, images), images),
                                images)
  assert 7.5 < float(bpd[0]) < 8.5


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize('kwargs,message', [
    (dict(features=10, num_channels=3), 'features = 10'),
    (dict(head_features=16, num_channels=3), 'head_features = 16'),
    (dict(kernel_size=4), 'kernel_size'),
    (dict(first_kernel_size=6), 'first_kernel_size'),
    (dict(num_channels=2), 'num_channels'),
    (dict(num_layers=0), 'num_layers'),
    (dict(dtype='float16'), 'dtype'),
    (dict(conv_impl='winograd'), 'conv_impl'),
])
@pytest.mark.parametrize('cls', [models.GatedPixelCNN, models.PixelCNN])
def test_bad_hyperparameters(cls, kwargs, message):
  base = dict(features=12, head_features=12, num_channels=1)
  with pytest.raises(ValueError, match=message):
    cls(**{**base, **kwargs})


@pytest.mark.parametrize('padding', [((1, 0), (2, 2)), ((0, 0), (3, 0)),
                                     ((2, 2), (2, 2))])
@pytest.mark.parametrize('impl', layers.CONV_IMPLS)
def test_every_conv_impl_computes_the_convolution(impl, padding):
  """layers.convolve: each formulation equals XLA's convolution, also with
  closed taps left out (their kernel taps are zero)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 6, 7, 4)), jnp.float32)
  kernel = rng.normal(size=(3, 5, 4, 6)).astype(np.float32)
  open_taps = rng.random((3, 5)) < 0.6
  kernel[~open_taps] = 0.0
  reference = layers.convolve(x, kernel, padding, 'conv')
  for taps in (None, open_taps):
    y = layers.convolve(x, kernel, padding, impl, taps)
    assert y.shape == reference.shape
    np.testing.assert_allclose(y, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name,C', [('gated_pixelcnn', 3), ('pixelcnn', 3)])
def test_every_conv_impl_is_the_same_model(name, C):
  """Same parameters (names and shapes), same logits and gradients: the
  choice of config.conv_impl is a matter of speed only."""
  config = default_config.get_model_config()
  config.update(name=name, num_layers=3, features=6 * C, num_channels=C,
                head_features=6 * C)
  images = jnp.asarray(np.random.default_rng(1).integers(
      0, 256, (2, 7, 6, C)), jnp.int32)
  results, params = {}, None
  for impl in layers.CONV_IMPLS:
    model = models.create_model(config, conv_impl=impl)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
    if params is None:
      params = model.init(jax.random.PRNGKey(0), images)['params']
    assert shapes['params'] == jax.eval_shape(lambda p: p, params)

    def loss(params, model=model):
      return -likelihood.log_prob(model.apply({'params': params}, images),
                                  images).mean()
    results[impl] = jax.jit(jax.value_and_grad(loss))(params)
  for impl in layers.CONV_IMPLS[1:]:
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
        results[impl], results['conv'])


@pytest.mark.parametrize('images,message', [
    (np.zeros((4, 4, 1), np.int32), 'rank 4'),
    (np.zeros((1, 4, 4, 1), np.float32), 'integers'),
    (np.full((1, 4, 4, 1), 256, np.int32), r'range \[256, 256\]'),
    (np.full((1, 4, 4, 1), -1, np.int32), r'range \[-1, -1\]'),
    (np.zeros((1, 4, 4, 3), np.int32), '3 channels'),
])
@pytest.mark.parametrize('name', ['gated_pixelcnn', 'pixelcnn'])
def test_bad_images(name, images, message):
  model = models.create_model(dict(name=name, features=8, head_features=8))
  variables = _init(model, jnp.zeros((1, 4, 4, 1), jnp.int32))
  with pytest.raises(ValueError, match=message):
    model.apply(variables, jnp.asarray(images))


def test_bad_labels():
  model = models.GatedPixelCNN(features=8, head_features=8, num_classes=3)
  images = jnp.zeros((2, 4, 4, 1), jnp.int32)
  variables = _init(model, images, labels=jnp.zeros((2,), jnp.int32))
  with pytest.raises(ValueError, match='pass labels'):
    model.apply(variables, images)
  with pytest.raises(ValueError, match=r'0\.\.2'):
    model.apply(variables, images, labels=jnp.asarray([0, 3]))
  with pytest.raises(ValueError, match=r'shape \(2,\)'):
    model.apply(variables, images, labels=jnp.asarray([0]))
  unconditional = models.GatedPixelCNN(features=8, head_features=8)
  with pytest.raises(ValueError, match='unconditional'):
    unconditional.init(jax.random.PRNGKey(0), images,
                       labels=jnp.zeros((2,), jnp.int32))


def test_bad_conditioning_maps():
  model = models.GatedPixelCNN(features=8, head_features=8)
  images = jnp.zeros((2, 4, 4, 1), jnp.int32)
  with pytest.raises(ValueError, match='cond_maps'):
    model.init(jax.random.PRNGKey(0), images,
               cond_maps=jnp.zeros((2, 5, 4, 3)))


def test_create_model_rejects_unknown_name_and_keys():
  with pytest.raises(ValueError, match='unknown model.name'):
    models.create_model(dict(name='pixelsnail'))
  with pytest.raises(ValueError, match='num_layer'):
    models.create_model(dict(name='gated_pixelcnn', num_layer=3))


def test_log_prob_shape_mismatch():
  with pytest.raises(ValueError, match='do not match'):
    likelihood.log_prob(jnp.zeros((1, 2, 2, 1, 256)),
                        jnp.zeros((1, 2, 3, 1), jnp.int32))
