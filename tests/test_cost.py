"""The analytic cost model equals what the implementation executes."""

import jax
import jax.numpy as jnp
import pytest

from configs import default
from configs import imagenet32
from gated_pixelcnn import cost
from gated_pixelcnn import models


def _config(**overrides):
  config = default.get_model_config()
  config.update(overrides)
  return config


@pytest.mark.parametrize('overrides', [
    {},
    dict(num_layers=1, features=6, head_features=12),
    dict(num_layers=3, features=12, kernel_size=3, first_kernel_size=7,
         num_channels=3, head_features=24),
    dict(num_layers=2, features=9, kernel_size=7, first_kernel_size=5,
         num_channels=3, head_features=6),
    dict(name='pixelcnn', num_layers=2, features=12, kernel_size=3,
         first_kernel_size=7, num_channels=3, head_features=6),
])
def test_executed_multiply_adds_equal_the_cost_model(overrides):
  """No wasted convolution work: traced dots/convs == the analytic count."""
  config = _config(**overrides)
  model = models.create_model(config)
  B, H, W, C = 2, 5, 7, config.num_channels
  images = jnp.zeros((B, H, W, C), jnp.int32)
  variables = model.init(jax.random.PRNGKey(0), images[:1])
  executed = cost.matmul_macs(model.apply, variables, images)
  assert executed == B * cost.macs_per_image(config, (H, W))


def test_a_middle_layer_costs_42_p_squared():
  for p in (12, 48, 384):
    deeper = _config(num_layers=5, features=p)
    shallower = _config(num_layers=4, features=p)
    assert (cost.macs_per_pixel(deeper) - cost.macs_per_pixel(shallower)
            == 42 * p * p)


def test_paper_size_forward_flops():
  """About 255 GFLOP per 32x32 image forward at p=384, 20 layers.

  That estimate is 2 x 42 p^2 x 20 x 32 x 32; the per-pixel count gives
  244.4 GFLOP because the first layer reads 3 channels, not p, and the last
  layer has no residual 1x1, while the output head adds 1.8 GFLOP. The model
  executes 238.3: the vertical stack (its convolutions and the v->h link,
  80% of the work) skips the last of the 32 rows.
  """
  config = imagenet32.get_config()
  flops = cost.flops_per_image(config.model, (32, 32, 3))
  assert 2 * 42 * 384**2 * 20 * 32 * 32 == pytest.approx(255e9, rel=0.01)
  per_pixel = 2 * cost.macs_per_pixel(config.model) * 32 * 32
  assert per_pixel == pytest.approx(244.4e9, rel=0.001)
  assert cost.flops_per_image(config.model, (32, 32, 3), all_rows=True)[
      'forward'] == per_pixel
  assert flops['forward'] == pytest.approx(238.3e9, rel=0.001)
  assert flops['train'] == 3 * flops['forward']


def test_unknown_model_has_no_cost_model():
  with pytest.raises(ValueError, match='no cost model'):
    cost.macs_per_pixel(_config(name='transformer'))


def test_training_estimate_of_the_paper_imagenet64_run():
  """200K steps of batch 128 at 2.90 TFLOP per 64x64 image (3 x forward),
  plus 20 forward passes over the 50,000 validation images (every 10K
  steps, the last one at step 200K)."""
  from configs import imagenet64  # pylint: disable=g-import-not-at-top
  config = imagenet64.get_config()
  shape = (64, 64, 3)
  per_image = cost.flops_per_image(config.model, shape)
  assert per_image['forward'] == pytest.approx(965.3e9, rel=1e-4)
  est = cost.training_estimate(config, shape, num_devices=32,
                               peak_flops=200e12, utilization=0.5,
                               price_per_device_hour=2.0)
  train = 200_000 * 128 * per_image['train']
  evals = 20 * 50_000 * per_image['forward']
  assert est['total_flops'] == pytest.approx(train + evals)
  hours = (train + evals) / (32 * 200e12 * 0.5) / 3600
  assert est['hours'] == pytest.approx(hours)
  assert est['usd'] == pytest.approx(hours * 32 * 2.0)
  config.num_train_steps = 25_000  # evals at 10K, 20K and 25K
  assert cost.training_estimate(config, shape, 32, 200e12, 0.5)[
      'eval_flops'] == pytest.approx(3 * 50_000 * per_image['forward'])
  with pytest.raises(ValueError, match='utilization'):
    cost.training_estimate(config, shape, 32, 200e12, 0.0)
