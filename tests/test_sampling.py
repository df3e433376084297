"""Samplers: cached equals naive, draws from the model, completion, errors."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from gated_pixelcnn import models
from gated_pixelcnn import modes
from gated_pixelcnn import sampling
from gated_pixelcnn import train
from tests import draws
from tests import helpers

CASES = [
    # (C, num_layers, kernel_size, first_kernel_size, classes, maps, H, W)
    (1, 1, 3, 3, 0, False, 4, 4),
    (1, 2, 5, 7, 0, False, 5, 3),
    (3, 2, 3, 3, 0, False, 3, 5),
    (3, 3, 7, 5, 4, False, 4, 4),
    (1, 4, 3, 7, 3, True, 6, 4),
    (3, 4, 5, 3, 2, True, 4, 6),
    (3, 1, 7, 7, 0, True, 2, 7),
    (3, 2, 1, 1, 0, False, 3, 4),    # 1x1 kernels: no taps to the left
]


def _model_and_cond(C, L, k, k0, classes, maps, H, W, batch=3, seed=0):
  model = models.GatedPixelCNN(
      num_layers=L, features=4 * C, kernel_size=k, first_kernel_size=k0,
      num_channels=C, num_classes=classes, head_features=4 * C)
  rng = np.random.default_rng(seed)
  cond = {}
  if classes:
    cond['labels'] = jnp.asarray(np.arange(batch) % classes)
  if maps:
    cond['cond_maps'] = jnp.asarray(rng.normal(size=(batch, H, W, 2)),
                                    jnp.float32)
    cond['cond_vector'] = jnp.asarray(rng.normal(size=(batch, 3)), jnp.float32)
  variables = model.init(jax.random.PRNGKey(seed),
                         jnp.zeros((1, H, W, C), jnp.int32),
                         **{k: v[:1] for k, v in cond.items()})
  # Sharper distributions than at init, so that samples vary with the inputs.
  variables = jax.tree_util.tree_map(lambda x: x * 3.0, variables)
  return model, variables, cond


@pytest.mark.parametrize('case', CASES, ids=str)
def test_cached_equals_naive(case):
  model, variables, cond = _model_and_cond(*case)
  C, H, W = case[0], case[6], case[7]
  kw = dict(num_samples=3, image_shape=(H, W, C), **cond)
  naive = sampling.sample(model, variables, jax.random.PRNGKey(7),
                          method='naive', **kw)
  cached = sampling.sample(model, variables, jax.random.PRNGKey(7),
                           method='cached', **kw)
  assert naive.dtype == cached.dtype == jnp.uint8
  assert naive.shape == (3, H, W, C)
  # No draw of this key is near a tie: equal on any CPU (tests/draws.py).
  assert draws.margin(model, variables, jax.random.PRNGKey(7), naive,
                      **cond) >= draws.MARGIN
  np.testing.assert_array_equal(naive, cached)
  # Not a constant image: the samples really depend on the key.
  other = sampling.sample(model, variables, jax.random.PRNGKey(8),
                          method='cached', **kw)
  assert not np.array_equal(other, cached)


def test_samplers_and_coder_multiply_in_full_float32(monkeypatch):
  """The code sets the precision its guarantees need, on every platform
  (GPUs and TPUs may otherwise use TF32 or bfloat16 passes): every sampler
  and coder program is traced and run under 'highest'."""
  seen = []

  def spy(loop):
    def run(*args):
      seen.append(jax.config.jax_default_matmul_precision)
      return loop(*args)
    return run

  for name in ('_naive', '_cached', '_cached_gpu_untuned'):
    monkeypatch.setattr(sampling, name, spy(getattr(sampling, name)))
  model, variables, _ = _model_and_cond(1, 1, 3, 3, 0, False, 3, 3)
  for method in ('naive', 'cached'):
    sampling.sample(model, variables, jax.random.PRNGKey(0), num_samples=2,
                    image_shape=(3, 3, 1), method=method)
  out = sampling.run_coder(model, variables,
                           lambda t, freqs: np.zeros(len(freqs), np.int32),
                           batch_size=2, image_shape=(3, 3, 1))
  assert not out.any()
  assert jax.config.jax_default_matmul_precision is None   # restored
  assert seen == [sampling.MATMUL_PRECISION] * 3 == ['highest'] * 3


@pytest.mark.parametrize('method', sampling.METHODS)
def test_greedy_is_argmax_of_the_model(method):
  model, variables, _ = _model_and_cond(1, 2, 3, 3, 0, False, 3, 3)
  images = sampling.sample(model, variables, jax.random.PRNGKey(0),
                           num_samples=2, image_shape=(3, 3, 1),
                           method=method, temperature=0.0)
  logits = model.apply(variables, images.astype(jnp.int32))
  np.testing.assert_array_equal(images, jnp.argmax(logits, -1))


@pytest.mark.parametrize('case', [CASES[2], CASES[5]], ids=str)
def test_completion_keeps_observed_subpixels(case):
  model, variables, cond = _model_and_cond(*case)
  C, H, W = case[0], case[6], case[7]
  images = jnp.asarray(np.random.default_rng(1).integers(0, 256, (3, H, W, C)),
                       jnp.uint8)
  for observed in (0, 1, W * C + 2, H * W * C - 1, H * W * C):
    out = {m: sampling.complete(model, variables, jax.random.PRNGKey(2),
                                images, observed, method=m, **cond)
           for m in sampling.METHODS}
    assert draws.margin(model, variables, jax.random.PRNGKey(2),
                        out['naive'], start=observed, **cond) >= draws.MARGIN
    np.testing.assert_array_equal(out['naive'], out['cached'])
    flat_in = np.asarray(images).reshape(3, -1)
    flat_out = np.asarray(out['cached']).reshape(3, -1)
    np.testing.assert_array_equal(flat_out[:, :observed],
                                  flat_in[:, :observed])
    if observed < H * W * C - 2:
      assert not np.array_equal(flat_out[:, observed:], flat_in[:, observed:])


def _peaky_rgb_model():
  """A 1x1 RGB model whose p(R) and p(G | R) are far from uniform."""
  model = models.GatedPixelCNN(num_layers=2, features=6, kernel_size=3,
                               first_kernel_size=3, num_channels=3,
                               head_features=6)
  variables = model.init(jax.random.PRNGKey(4), jnp.zeros((1, 1, 1, 3),
                                                         jnp.int32))
  params = variables['params']
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(
      lambda x: x + 0.5 * rng.normal(size=x.shape).astype(np.float32), params)
  head = params['head']['logits']
  head['bias'] = head['bias'] * 6.0
  head['kernel'] = head['kernel'] * 4.0
  return model, {'params': params}


def _exact_marginals(model, variables):
  """p(R) and p(G) = sum_R p(R) p(G | R), from the likelihood."""
  r = np.arange(256)
  images = jnp.asarray(np.stack([r, 0 * r, 0 * r], -1).reshape(256, 1, 1, 3))
  probs = np.asarray(jax.nn.softmax(model.apply(variables, images), -1),
                     np.float64)[:, 0, 0]                 # [R, C, 256]
  p_r = probs[0, 0]
  p_g = (p_r[:, None] * probs[:, 1]).sum(0)
  return p_r, p_g


def _chi2_pvalue(samples, probs):
  counts = np.bincount(samples, minlength=256)
  expected = probs / probs.sum() * len(samples)
  # Pool the rare values so every expected count is at least 5.
  order = np.argsort(expected)
  pooled_obs, pooled_exp, acc_o, acc_e = [], [], 0.0, 0.0
  for v in order:
    acc_o += counts[v]
    acc_e += expected[v]
    if acc_e >= 5:
      pooled_obs.append(acc_o)
      pooled_exp.append(acc_e)
      acc_o = acc_e = 0.0
  pooled_obs[-1] += acc_o
  pooled_exp[-1] += acc_e
  return stats.chisquare(pooled_obs, pooled_exp).pvalue


def test_samples_follow_the_model_distribution():
  model, variables = _peaky_rgb_model()
  p_r, p_g = _exact_marginals(model, variables)
  assert p_r.max() > 0.05 and np.abs(p_r - p_g).sum() > 0.5  # a real test
  samples = np.asarray(sampling.sample(
      model, variables, jax.random.PRNGKey(0), num_samples=20_000,
      image_shape=(1, 1, 3), method='cached')).reshape(-1, 3).astype(int)
  assert _chi2_pvalue(samples[:, 0], p_r) > 1e-3
  assert _chi2_pvalue(samples[:, 1], p_g) > 1e-3
  # A deliberately wrong sampler (channels permuted) fails the same test.
  wrong = samples[:, [1, 0, 2]]
  assert _chi2_pvalue(wrong[:, 0], p_r) < 1e-6
  assert _chi2_pvalue(wrong[:, 1], p_g) < 1e-6


def test_naive_sampler_follows_the_model_distribution_too():
  model, variables = _peaky_rgb_model()
  p_r, p_g = _exact_marginals(model, variables)
  samples = np.asarray(sampling.sample(
      model, variables, jax.random.PRNGKey(1), num_samples=5_000,
      image_shape=(1, 1, 3), method='naive')).reshape(-1, 3).astype(int)
  assert _chi2_pvalue(samples[:, 0], p_r) > 1e-3
  assert _chi2_pvalue(samples[:, 1], p_g) > 1e-3


def test_pixelcnn_baseline_samples_naively_and_refuses_cached():
  model = models.PixelCNN(num_layers=1, features=8, head_features=8)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 3, 1),
                                                         jnp.int32))
  images = sampling.sample(model, variables, jax.random.PRNGKey(0),
                           num_samples=2, image_shape=(3, 3, 1),
                           method='naive')
  assert images.shape == (2, 3, 3, 1)
  with pytest.raises(ValueError, match="method='naive'"):
    sampling.sample(model, variables, jax.random.PRNGKey(0), num_samples=2,
                    image_shape=(3, 3, 1), method='cached')


@pytest.mark.parametrize('kwargs,message', [
    (dict(image_shape=(4, 4, 3)), 'channel'),
    (dict(image_shape=(0, 4, 1)), 'positive sizes'),
    (dict(temperature=-1.0), 'temperature'),
    (dict(temperature=float('nan')), 'temperature'),
    (dict(method='beam'), 'method'),
    (dict(labels=jnp.asarray([0, 1])), 'unconditional'),
])
def test_bad_sampling_arguments(kwargs, message):
  model, variables, _ = _model_and_cond(1, 1, 3, 3, 0, False, 4, 4)
  args = {**dict(num_samples=2, image_shape=(4, 4, 1)), **kwargs}
  with pytest.raises(ValueError, match=message):
    sampling.sample(model, variables, jax.random.PRNGKey(0), **args)


def test_bad_labels_for_class_conditional_sampling():
  model, variables, _ = _model_and_cond(1, 1, 3, 3, 4, False, 4, 4)
  kw = dict(num_samples=2, image_shape=(4, 4, 1))
  with pytest.raises(ValueError, match='pass labels'):
    sampling.sample(model, variables, jax.random.PRNGKey(0), **kw)
  with pytest.raises(ValueError, match=r'0\.\.3'):
    sampling.sample(model, variables, jax.random.PRNGKey(0),
                    labels=jnp.asarray([0, 4]), **kw)


def test_bad_completion_arguments():
  model, variables, _ = _model_and_cond(1, 1, 3, 3, 0, False, 4, 4)
  images = jnp.zeros((2, 4, 4, 1), jnp.uint8)
  with pytest.raises(ValueError, match='num_observed'):
    sampling.complete(model, variables, jax.random.PRNGKey(0), images, 17)
  with pytest.raises(ValueError, match='num_rows'):
    sampling.complete_rows(model, variables, jax.random.PRNGKey(0), images, 5)
  with pytest.raises(ValueError, match='rank 4|batch, height'):
    sampling.complete(model, variables, jax.random.PRNGKey(0), images[0], 3)


# -------------------------------------------------------- workdir modes


def test_sample_and_complete_modes_write_pngs_and_summaries(fake_config,
                                                            tmp_path):
  workdir = str(tmp_path / 'run')
  fake_config.num_train_steps = 2
  fake_config.sample.during_training = True
  fake_config.sample.num_samples = 4
  train.train_and_evaluate(fake_config, workdir)
  assert os.listdir(tmp_path / 'run' / 'samples') == ['samples_00000002.png']
  path = modes.sample_checkpoint(fake_config, workdir)
  assert path.endswith('samples_cached_t1_00000002.png') and os.path.exists(
      path)
  fake_config.sample.num_completions = 2
  path = modes.complete_checkpoint(fake_config, workdir)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  grid = np.asarray(Image.open(path))
  # 4 rows of original | occluded | 2 completions, 28x28 tiles, pad 2, x2.
  assert grid.shape == (2 * (4 * 30 + 2), 2 * (4 * 30 + 2))
  assert {'samples', 'samples_cached_t1', 'completions'} <= helpers.tags(workdir)


def test_modes_without_checkpoint_fail_clearly(fake_config, tmp_path):
  from gated_pixelcnn import checkpointing  # pylint: disable=g-import-not-at-top
  for mode in (modes.sample_checkpoint, modes.complete_checkpoint):
    with pytest.raises(checkpointing.CheckpointError, match='no checkpoint'):
      mode(fake_config, str(tmp_path / 'empty'))


def test_conditioning_inputs_must_match_the_variables():
  model, variables, cond = _model_and_cond(1, 2, 3, 3, 0, True, 4, 4)
  kw = dict(num_samples=3, image_shape=(4, 4, 1))
  with pytest.raises(ValueError, match='cond_maps missing'):
    sampling.sample(model, variables, jax.random.PRNGKey(0),
                    cond_vector=cond['cond_vector'], **kw)
  plain, plain_vars, _ = _model_and_cond(1, 2, 3, 3, 0, False, 4, 4)
  with pytest.raises(ValueError, match='cond_maps given'):
    sampling.sample(plain, plain_vars, jax.random.PRNGKey(0),
                    cond_maps=cond['cond_maps'], **kw)


def test_class_conditional_sample_grid_has_one_row_per_class():
  from gated_pixelcnn import figures  # pylint: disable=g-import-not-at-top
  from configs import test as test_config  # pylint: disable=g-import-not-at-top
  model, variables, _ = _model_and_cond(1, 1, 3, 3, 3, False, 5, 4)
  sample_config = test_config.get_config().sample
  sample_config.num_samples = 6
  grid = figures.sample_grid(model, variables['params'],
                             jax.random.PRNGKey(0), (5, 4, 1), sample_config)
  # 3 classes x 2 samples, tiles of 5x4 with 2-pixel padding.
  assert grid.shape == (3 * 7 + 2, 2 * 6 + 2, 1)
