"""The PixelRNN baselines: exact causality, their receptive fields, sampling.

Causality is checked as for the Gated PixelCNN (gated_pixelcnn/influence.py):
every sub-pixel is perturbed in turn and the logits compared bit for bit.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import fashion_mnist_diagonal_bilstm
from configs import fashion_mnist_row_lstm
from gated_pixelcnn import layers
from gated_pixelcnn import models
from gated_pixelcnn import sampling
from gated_pixelcnn import train
from gated_pixelcnn.influence import causal_order
from gated_pixelcnn.influence import influence
from gated_pixelcnn.influence import sub_pixels


def _expand(rf_pixels, H, W, C):
  """Sub-pixel receptive field from a pixel one ([H, W, H, W] booleans): every
  channel of the pixels in it, and the earlier channels of the pixel itself."""
  i, j, c = sub_pixels(H, W, C)
  other = rf_pixels[i[:, None], j[:, None], i[None, :], j[None, :]]
  here = (i[:, None] == i[None, :]) & (j[:, None] == j[None, :]) & (
      c[None, :] < c[:, None])
  return other | here


def row_lstm_receptive_field(H, W, C, num_layers, kernel_size,
                             first_kernel_size):
  """The Row LSTM's receptive field, from the paper's equations.

  x0 (7x7 mask A): the r0 rows above, r0 columns either side, and r0 pixels
  to the left. Each layer: h(i, j) reads the input maps at (i, j-r..j)
  (masked 1 x k input-to-state) and h, c at (i-1, j-r..j+r) (1 x k
  state-to-state); the residual adds h to the maps.

  Pixels, not sub-pixels: exact for C = 1, and for C = 3 while k//2 <= k0//2
  (then the first layer already holds every channel of each pixel that the
  unmasked state-to-state could carry a partial group of).
  """
  r, r0 = kernel_size // 2, first_kernel_size // 2
  assert C == 1 or r <= r0, 'pixel-level reference: C = 1 or k//2 <= k0//2'

  x = np.zeros((H, W, H, W), bool)
  for i in range(H):
    for j in range(W):
      x[i, j, max(0, i - r0):i, max(0, j - r0):j + r0 + 1] = True
      x[i, j, i, max(0, j - r0):j] = True
  for _ in range(num_layers):
    h = np.zeros_like(x)
    for i in range(H):
      for j in range(W):
        h[i, j] = x[i, max(0, j - r):j + 1].any(axis=0)
        if i:
          h[i, j] |= h[i - 1, max(0, j - r):j + r + 1].any(axis=0)
    x |= h
  return _expand(x, H, W, C)


def _model(cls, C, L, **kw):
  return cls(num_layers=L, features=8 * C, num_channels=C,
             head_features=8 * C, **kw)


ROW_CASES = [
    # (C, num_layers, kernel_size, first_kernel_size, H, W)
    (1, 1, 3, 3, 6, 9),
    (1, 2, 3, 7, 6, 9),
    (1, 2, 5, 3, 5, 9),
    (3, 1, 3, 3, 4, 6),
    (3, 2, 3, 5, 4, 6),
]


@pytest.mark.parametrize('case', ROW_CASES, ids=str)
def test_row_lstm_no_leak_and_its_triangle(case):
  """No leak; the sub-pixels that change the logits are exactly the
  receptive field the paper's equations give (the triangle above)."""
  C, L, k, k0, H, W = case
  model = _model(models.RowLSTM, C, L, kernel_size=k, first_kernel_size=k0)
  changed = influence(model, H, W, C, num_bases=3)
  assert not (changed & ~causal_order(H, W, C)).any()
  expected = row_lstm_receptive_field(H, W, C, L, k, k0)
  assert np.array_equal(changed, expected), (
      f'missing {np.argwhere(expected & ~changed)[:5]}, extra '
      f'{np.argwhere(changed & ~expected)[:5]}')


def test_what_the_row_lstm_misses_and_the_diagonal_bilstm_sees():
  """One layer, 3x3 windows, a 6 x 9 image: at the bottom-right pixel the
  Row LSTM misses the start of its own row; at the bottom-left one, the row
  above beyond the triangle. The Diagonal BiLSTM sees both."""
  H, W, C = 6, 9, 1
  rf = row_lstm_receptive_field(H, W, C, 1, 3, 3)
  row_lstm = influence(_model(models.RowLSTM, C, 1, first_kernel_size=3),
                       H, W, C)
  diagonal = influence(
      _model(models.DiagonalBiLSTM, C, 1, first_kernel_size=3), H, W, C)
  assert np.array_equal(row_lstm, rf)

  def sub_pixel(i, j):
    return i * W + j

  for p, q in [((5, 8), (5, 0)),    # far left in the current row
               ((5, 8), (5, 5)),    # 3 to the left: beyond 1 + 1
               ((5, 0), (4, 8)),    # the row above, far right
               ((5, 0), (2, 8))]:   # outside the triangle higher up
    assert not row_lstm[sub_pixel(*p), sub_pixel(*q)], (p, q)
    assert diagonal[sub_pixel(*p), sub_pixel(*q)], (p, q)
  # In all, the triangle misses 561 of the 1,431 (output, earlier input)
  # pairs here; the Diagonal BiLSTM none.
  assert (causal_order(H, W, C) & ~row_lstm).sum() == 561
  assert np.array_equal(diagonal, causal_order(H, W, C))


@pytest.mark.parametrize('C,L,H,W', [(1, 1, 10, 10), (1, 2, 6, 7),
                                     (3, 1, 5, 6), (3, 2, 4, 5)])
def test_diagonal_bilstm_sees_every_earlier_sub_pixel(C, L, H, W):
  """No leak and no blind spot at any distance: the influence pattern is
  exactly "every earlier sub-pixel", already with one layer on a 10 x 10
  image (the far corner is 18 pixels away)."""
  model = _model(models.DiagonalBiLSTM, C, L)
  changed = influence(model, H, W, C)
  assert np.array_equal(changed, causal_order(H, W, C)), (
      f'leaks {np.argwhere(changed & ~causal_order(H, W, C))[:5]}, missing '
      f'{np.argwhere(causal_order(H, W, C) & ~changed)[:5]}')


@pytest.mark.parametrize('C,L,H,W', [(1, 1, 6, 7), (1, 2, 5, 7),
                                     (3, 1, 4, 6)])
def test_paper_literal_diagonal_bilstm_misses_the_last_pixel_above(C, L, H,
                                                                   W):
  """backward_image=False (the layer as the paper writes it): no leak, but
  the last sub-pixel of the row above, (i-1, W-1, C-1), is invisible from
  (i, j) for j < W-1-k0//2: no map in row i-1 holds it (the maps at a pixel
  hold only its earlier channels), and the first layer's window reaches it
  only near the right edge. That, and nothing else, is missed, at any
  depth."""
  k0 = 7
  model = _model(models.DiagonalBiLSTM, C, L, first_kernel_size=k0,
                 backward_image=False)
  changed = influence(model, H, W, C)
  i, j, c = sub_pixels(H, W, C)
  gap = ((i[None, :] == i[:, None] - 1) & (j[None, :] == W - 1) &
         (c[None, :] == C - 1) & (j[:, None] < W - 1 - k0 // 2))
  assert gap.any()
  assert np.array_equal(changed, causal_order(H, W, C) & ~gap)


def test_skew_and_unskew():
  x = jnp.arange(2 * 3 * 4 * 5, dtype=jnp.float32).reshape(2, 3, 4, 5) + 1
  s = layers.skew(x)
  assert s.shape == (2, 3, 6, 5)
  for i in range(3):
    np.testing.assert_array_equal(s[:, i, i:i + 4], x[:, i])
    assert not np.asarray(s[:, i, :i]).any()
    assert not np.asarray(s[:, i, i + 4:]).any()
  np.testing.assert_array_equal(layers.unskew(s, 4), x)


@pytest.mark.parametrize('cls', [models.RowLSTM, models.DiagonalBiLSTM])
@pytest.mark.parametrize('C', [1, 3])
def test_naive_sampling_runs_and_cached_refuses(cls, C):
  model = _model(cls, C, 2)
  variables = model.init(jax.random.PRNGKey(0),
                         jnp.zeros((1, 4, 5, C), jnp.int32))
  images = sampling.sample(model, variables, jax.random.PRNGKey(1),
                           num_samples=3, image_shape=(4, 5, C),
                           method='naive')
  assert images.shape == (3, 4, 5, C) and images.dtype == np.uint8
  again = sampling.sample(model, variables, jax.random.PRNGKey(1),
                          num_samples=3, image_shape=(4, 5, C),
                          method='naive')
  np.testing.assert_array_equal(images, again)
  # Greedy sampling returns the model's own argmax, sub-pixel by sub-pixel.
  greedy = sampling.sample(model, variables, jax.random.PRNGKey(1),
                           num_samples=1, image_shape=(4, 5, C),
                           method='naive', temperature=0.0)
  logits = model.apply(variables, jnp.asarray(greedy, jnp.int32))
  np.testing.assert_array_equal(np.argmax(logits, -1), greedy)
  with pytest.raises(ValueError, match='cached'):
    sampling.sample(model, variables, jax.random.PRNGKey(1), num_samples=1,
                    image_shape=(4, 5, C), method='cached')


@pytest.mark.parametrize('kwargs,message', [
    (dict(features=7), 'must be even'),
    (dict(num_classes=10), 'unconditional'),
    (dict(num_layers=0), 'num_layers'),
])
def test_bad_hyperparameters(kwargs, message):
  for cls in (models.RowLSTM, models.DiagonalBiLSTM):
    fields = dict(features=8, head_features=8)
    fields.update(kwargs)
    with pytest.raises(ValueError, match=message):
      cls(**fields)
  with pytest.raises(ValueError, match='kernel_size'):
    models.RowLSTM(kernel_size=4)


@pytest.mark.parametrize('config_module', [fashion_mnist_row_lstm,
                                           fashion_mnist_diagonal_bilstm])
def test_configs_train_and_evaluate(config_module, fake_config, tmp_path):
  """create_model serves the configs' model.name, and train_and_evaluate
  (with its naive sample grid) runs unchanged."""
  config = config_module.get_config()
  model = models.create_model(config.model)
  assert isinstance(model, (models.RowLSTM, models.DiagonalBiLSTM))
  fake_config.model = config.model
  fake_config.model.num_layers = 1
  fake_config.model.features = 8
  fake_config.model.head_features = 16
  fake_config.sample.method = 'naive'
  fake_config.sample.during_training = True
  fake_config.sample.num_samples = 2
  metrics = train.train_and_evaluate(fake_config, str(tmp_path / 'run'))
  assert np.isfinite(metrics['bits_per_dim'])
  assert list((tmp_path / 'run' / 'samples').glob('samples_*.png'))
