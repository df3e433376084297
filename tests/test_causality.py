"""Exact causality: no leak from later sub-pixels, no blind spot.

Every test perturbs each sub-pixel of a small image in turn (all of them, not a
sample) and compares the logits bit for bit in float32 on CPU, each image
computed by the same program at batch 1 (gated_pixelcnn/influence.py).
"""

import jax.numpy as jnp
import numpy as np
import pytest

from gated_pixelcnn import layers
from gated_pixelcnn import models
from gated_pixelcnn.influence import causal_order
from gated_pixelcnn.influence import gated_receptive_field
from gated_pixelcnn.influence import influence


GATED_CASES = [
    # (C, num_layers, kernel_size, first_kernel_size, classes, maps, H, W)
    (1, 1, 3, 3, 0, False, 5, 6),
    (3, 1, 3, 3, 0, False, 5, 6),
    (1, 2, 3, 7, 0, False, 5, 6),
    (3, 2, 5, 5, 4, False, 5, 6),
    (3, 3, 7, 3, 0, True, 5, 6),
    (1, 4, 5, 7, 10, True, 5, 6),
    (3, 4, 3, 3, 3, True, 5, 6),
    (3, 2, 3, 3, 0, False, 9, 11),   # reach 2: RF borders inside the image
    (1, 3, 3, 3, 2, True, 10, 9),
]


def _rng_cases(n, seed=0):
  rng = np.random.default_rng(seed)
  for _ in range(n):
    yield (int(rng.choice([1, 3])), int(rng.integers(1, 5)),
           int(rng.choice([3, 5, 7])), int(rng.choice([3, 5, 7])),
           int(rng.choice([0, 5])), bool(rng.integers(2)), 5, 6)


def _gated(C, L, k, k0, classes, maps, H, W, conv_impl='conv'):
  model = models.GatedPixelCNN(
      num_layers=L, features=8 * C, kernel_size=k, first_kernel_size=k0,
      num_channels=C, num_classes=classes, head_features=8 * C,
      conv_impl=conv_impl)
  cond = {}
  rng = np.random.default_rng(7)
  if classes:
    cond['labels'] = jnp.asarray([classes - 1])
  if maps:
    cond['cond_maps'] = jnp.asarray(rng.normal(size=(1, H, W, 3)), jnp.float32)
    cond['cond_vector'] = jnp.asarray(rng.normal(size=(1, 2)), jnp.float32)
  return model, cond


@pytest.mark.parametrize('case', GATED_CASES + list(_rng_cases(6)), ids=str)
def test_gated_no_leak_and_no_blind_spot(case):
  C, L, k, k0, classes, maps, H, W = case
  model, cond = _gated(*case)
  changed = influence(model, H, W, C, **cond)
  leaks = changed & ~causal_order(H, W, C)
  assert not leaks.any(), f'{leaks.sum()} (output, input) pairs leak'
  expected = gated_receptive_field(H, W, C, L, k, k0)
  missing = expected & ~changed
  assert not missing.any(), f'blind spot: {np.argwhere(missing)[:5]}'
  assert np.array_equal(changed, expected)


@pytest.mark.parametrize('conv_impl', ['im2col', 'taps'])
@pytest.mark.parametrize('case', [GATED_CASES[1], GATED_CASES[5],
                                  GATED_CASES[7]], ids=str)
def test_every_conv_impl_has_the_same_receptive_field(case, conv_impl):
  """The matmul formulations of the convolutions (layers.convolve) skip
  the closed taps: still no leak, and exactly the same receptive field."""
  C, L, k, k0, _, _, H, W = case
  model, cond = _gated(*case, conv_impl=conv_impl)
  changed = influence(model, H, W, C, **cond)
  assert np.array_equal(changed, gated_receptive_field(H, W, C, L, k, k0))


@pytest.mark.parametrize('conv_impl', ['im2col', 'taps'])
def test_pixelcnn_conv_impls_have_the_same_receptive_field(conv_impl):
  C, H, W = 3, 7, 7
  kwargs = dict(num_layers=2, features=12 * C, kernel_size=3,
                first_kernel_size=5, num_channels=C, head_features=8 * C)
  reference = influence(models.PixelCNN(**kwargs), H, W, C, num_bases=6)
  changed = influence(models.PixelCNN(**kwargs, conv_impl=conv_impl), H, W,
                      C, num_bases=6)
  assert np.array_equal(changed, reference)


@pytest.mark.parametrize('C', [1, 3])
def test_pixelcnn_no_leak_but_blind_spot(C):
  H, W, L, k, k0 = 9, 9, 2, 3, 3
  model = models.PixelCNN(num_layers=L, features=12 * C, kernel_size=k,
                          first_kernel_size=k0, num_channels=C,
                          head_features=8 * C)
  # ReLUs on every path: more bases than the gated model needs.
  changed = influence(model, H, W, C, num_bases=6)
  assert not (changed & ~causal_order(H, W, C)).any()
  # Everything causal within the stacked kernels' reach R, as the gated test
  # expects of a model with that reach (R rows above instead of R + 1).
  R = k0 // 2 + L * (k // 2)
  full = gated_receptive_field(H, W, C, 1, 1, 2 * R + 1)
  i = np.repeat(np.arange(H), W * C)
  j = np.tile(np.repeat(np.arange(W), C), H)
  full &= (i[:, None] - i[None, :]) <= R
  # The same comparison that passes for the gated model fails here ...
  assert not np.array_equal(changed, full)
  assert not (changed & ~full).any()
  # ... and exactly because of the blind spot: only pixels above-right of the
  # current one are missed.
  p, q = np.nonzero(full & ~changed)
  assert len(p) > 0
  assert np.all(i[q] < i[p]) and np.all(j[q] > j[p])


def test_receptive_field_covers_everything_earlier_when_deep_enough():
  # A sanity check of the reference itself: with a reach beyond the image,
  # the gated receptive field is exactly "every earlier sub-pixel".
  H, W, C = 4, 5, 3
  rf = gated_receptive_field(H, W, C, 3, 5, 7)
  assert np.array_equal(rf, causal_order(H, W, C))


def _break_shift(monkeypatch):
  # Trap 1: vertical features reach the horizontal stack of the same row.
  monkeypatch.setattr(layers, 'link_rows_below', lambda x: jnp.pad(
      x, ((0, 0), (0, 1), (0, 0), (0, 0))))


def _break_first_mask(monkeypatch):
  # Trap 2: the first horizontal layer sees the current sub-pixel.
  colour_mask = layers.colour_mask
  monkeypatch.setattr(layers, 'colour_mask',
                      lambda i, o, mask_type: colour_mask(i, o, 'B'))


def _break_colour_groups(monkeypatch):
  # Trap 3: no colour mask at all on the taps that read the current pixel.
  monkeypatch.setattr(layers, 'colour_mask',
                      lambda i, o, mask_type: np.ones((len(i), len(o))))


@pytest.mark.parametrize('breakage', [_break_shift, _break_first_mask,
                                      _break_colour_groups])
def test_leak_detector_catches_known_traps(monkeypatch, breakage):
  breakage(monkeypatch)
  H, W, C = 4, 5, 3
  model, _ = _gated(C, 2, 3, 3, 0, False, H, W)
  changed = influence(model, H, W, C)
  assert (changed & ~causal_order(H, W, C)).any()
