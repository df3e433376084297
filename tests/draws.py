"""How far every sampled draw is from a tie: what makes equality of two
samplers (different programs, so logits that differ in the last bits) a
claim that holds on any CPU.

The samplers draw sub-pixel t as argmax(logits / temperature + g_t) with
Gumbel noise g_t from ``fold_in(rng, t)`` (`jax.random.categorical`). Two
samplers whose logits differ by less than half the gap between the two
largest of those values draw the same value. The naive and the cached
sampler's logits differ by at most ~3e-5 (measured on CPUs with AVX-512,
AVX2 and SSE4.2 kernels), so a key whose draws all have a gap of at least
MARGIN gives identical images on any of them.
"""

import jax
import jax.numpy as jnp
import numpy as np

MARGIN = 2e-4


def margin(model, variables, rng, images, *, start=0, fixed=None,
           temperature=1.0, **cond) -> float:
  """The smallest gap, over the sub-pixels drawn from ``start`` on (and not
  ``fixed``, [H, W, C] booleans), between the two largest values of
  logits / temperature + noise; the logits are teacher-forced from the
  drawn ``images`` (by causality, those the sampler saw). Fails if that
  noise model does not reproduce every draw."""
  images = jnp.asarray(images, jnp.int32)
  B = images.shape[0]
  logits = np.asarray(model.apply(variables, images, **cond)).reshape(
      B, -1, 256)
  values = np.asarray(images).reshape(B, -1)
  free = np.ones(values.shape[1], bool) if fixed is None else ~np.asarray(
      fixed).reshape(-1)
  smallest = np.inf
  for t in range(start, values.shape[1]):
    if not free[t]:
      continue
    noise = jax.random.gumbel(jax.random.fold_in(rng, t), (B, 256))
    z = logits[:, t] / temperature + np.asarray(noise)
    np.testing.assert_array_equal(
        z.argmax(-1), values[:, t],
        err_msg=f'sub-pixel {t}: the draws are not argmax(logits + Gumbel '
        'noise of fold_in(rng, t)); update tests/draws.py to the sampler.')
    top2 = np.sort(z, axis=-1)[:, -2:]
    smallest = min(smallest, float((top2[:, 1] - top2[:, 0]).min()))
  return smallest
