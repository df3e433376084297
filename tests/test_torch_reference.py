"""bench/torch_reference.py computes the same model as the Flax code.

Runs where PyTorch is installed (the `bench` extra); skipped otherwise.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from bench import torch_reference  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import default  # pylint: disable=g-import-not-at-top,wrong-import-position
from gated_pixelcnn import likelihood  # pylint: disable=g-import-not-at-top,wrong-import-position
from gated_pixelcnn import models  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.mark.parametrize('num_channels', [1, 3])
def test_same_weights_same_loss_and_gradients(num_channels):
  config = default.get_model_config()
  config.update(num_layers=3, features=6 * num_channels, kernel_size=3,
                first_kernel_size=5, num_channels=num_channels,
                head_features=3 * num_channels)
  model = models.create_model(config)
  rng = np.random.RandomState(0)
  images = rng.randint(0, 256, (3, 6, 7, num_channels)).astype(np.uint8)
  params = model.init(jax.random.PRNGKey(1), jnp.asarray(images[:1]))['params']
  # Non-zero biases, so that they are compared too.
  params = jax.tree_util.tree_map(
      lambda x: x + 0.1 * jnp.asarray(rng.randn(*x.shape), jnp.float32),
      params)

  def loss_fn(p):
    x = jnp.asarray(images)
    return likelihood.bits_per_dim(model.apply({'params': p}, x), x).mean()

  loss, grads = jax.value_and_grad(loss_fn)(params)

  reference = torch_reference.from_config(config)
  torch_reference.from_flax(reference, params)
  torch_images = torch.from_numpy(images)
  torch_loss = torch_reference.bits_per_dim(reference(torch_images),
                                            torch_images)
  torch_loss.backward()
  np.testing.assert_allclose(float(torch_loss.detach()), float(loss), rtol=1e-5)
  for i, block in enumerate(reference.blocks):
    for name in ('vertical_conv', 'horizontal_conv', 'v_to_h', 'skip'):
      expected = np.asarray(grads[f'block_{i}'][name]['kernel'])
      got = getattr(block, name).conv.weight.grad.numpy().transpose(2, 3, 1, 0)
      np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(
      reference.logits.conv.bias.grad.numpy(),
      np.asarray(grads['head']['logits']['bias']), rtol=1e-4, atol=1e-6)


def test_conditional_models_are_not_covered():
  config = default.get_model_config()
  config.num_classes = 10
  with pytest.raises(ValueError, match='unconditional'):
    torch_reference.from_config(config)
