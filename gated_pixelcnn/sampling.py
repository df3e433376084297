"""Sampling and completion: one jitted loop writing sub-pixels in order.

Sub-pixel t = (i * W + j) * C + c (raster order, then channel) is drawn with
the key ``fold_in(rng, t)`` from softmax(logits / temperature) (argmax when
the temperature is 0) and written to an integer canvas. Two methods:

* ``naive``: every step runs the whole model on the canvas (the reference).
* ``cached``: the fast scheme of Ramachandran et al. (2017) for the Gated
  PixelCNN. Each layer keeps a cache: the last k//2 + 1 rows of its vertical
  input, the last k//2 + 1 columns of its horizontal input in the current row,
  and the v->h link of the row above. At the start of row i the vertical stack
  is computed once for row i - 1 (the only new row it can see); at the start
  of pixel (i, j) the parts of the horizontal stack that its channels cannot
  change (conv taps to the left, link, bias, conditioning) are summed once;
  each channel step then computes only what the new sub-pixel changes: the
  conv's current-pixel tap, the gates, the 1x1s and the head at that pixel.
  Zero padding of the full model is reproduced by zero-initialised caches:
  nothing (no bias) is inserted where the model shifts or pads.

With the same key both methods return the same images.

`run_coder` runs the cached loop with an entropy coder in place of the random
draw (`gated_pixelcnn.compression`): at every sub-pixel the loop hands the
coder the model's distribution, quantised to integers in the compiled loop,
and writes the value the coder returns.
"""

from __future__ import annotations

import functools
import threading
from typing import Callable

import flax
import jax
from jax.experimental import io_callback
import jax.numpy as jnp
import numpy as np

from gated_pixelcnn import layers
from gated_pixelcnn import model_parts
from gated_pixelcnn import models

Array = jax.Array
METHODS = ('naive', 'cached')
# Quantised distributions given to an entropy coder sum to 2**PRECISION_BITS.
PRECISION_BITS = 20
# The samplers and the coder multiply in full float32 on every platform (not
# in TF32 or bfloat16 passes, which GPUs and TPUs may use by default): the
# naive and cached programs then differ only by summation order, as on a
# CPU, and the coder's frequencies come from the same arithmetic anywhere.
MATMUL_PRECISION = 'highest'


# ------------------------------------------------------------- public API


def sample(model, variables, rng: Array, *, num_samples: int,
           image_shape: tuple[int, int, int], method: str = 'cached',
           labels: Array | None = None, temperature: float = 1.0,
           cond_vector: Array | None = None,
           cond_maps: Array | None = None) -> Array:
  """Draws images from the model.

  Args:
    model: a module from `models.create_model` (``cached`` needs a
      `models.GatedPixelCNN`).
    variables: its variables, ``{'params': ...}``.
    rng: a PRNG key; the same key gives the same images for both methods.
    num_samples: batch size B.
    image_shape: (H, W, C); C must be the model's num_channels.
    method: 'cached' (fast) or 'naive' (full recompute per sub-pixel).
    labels: int [B] class labels, required iff the model is class-conditional.
    temperature: softmax temperature; 0 takes the most likely value.
    cond_vector: optional float [B, D] global conditioning vector.
    cond_maps: optional float [B, H, W, S] spatial conditioning maps.

  Returns:
    uint8 [B, H, W, C] images.
  """
  H, W, C = image_shape
  canvas = jnp.zeros((num_samples, H, W, C), jnp.int32)
  return complete(model, variables, rng, canvas, 0, method=method,
                  labels=labels, temperature=temperature,
                  cond_vector=cond_vector, cond_maps=cond_maps)


def complete(model, variables, rng: Array, images: Array, num_observed: int,
             *, method: str = 'cached', labels: Array | None = None,
             temperature: float = 1.0, cond_vector: Array | None = None,
             cond_maps: Array | None = None,
             fixed: Array | None = None) -> Array:
  """Samples every sub-pixel after the first ``num_observed`` of each image.

  The leading ``num_observed`` sub-pixels (raster order, then channel) of
  ``images`` are kept exactly; use ``rows * W * C`` to observe whole rows.
  ``fixed``, bool [H, W, C], marks further sub-pixels kept from ``images``
  (multi-scale: the pixels of the low-resolution image). Arguments and
  result as in `sample`; ``images`` are integers [B, H, W, C].
  """
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise ValueError(f'images must be [batch, height, width, channels], got '
                     f'shape {images.shape}.')
  B, H, W, C = images.shape
  _check(model, method, (H, W, C), B, labels, temperature, cond_vector,
         cond_maps)
  model_parts.check_images(images, model.num_channels)
  if not 0 <= num_observed <= H * W * C:
    raise ValueError(f'num_observed = {num_observed} must be in 0..{H * W * C}'
                     f' (the number of sub-pixels per image).')
  if fixed is None:
    fixed = np.zeros((H, W, C), bool)
  if np.shape(fixed) != (H, W, C):
    raise ValueError(f'fixed must be a bool mask of shape {(H, W, C)}, got '
                     f'{np.shape(fixed)}.')
  _check_conditioning_params(model, variables, labels, cond_vector, cond_maps)
  cond = {'labels': labels, 'cond_vector': cond_vector, 'cond_maps': cond_maps}
  cond = {k: v for k, v in cond.items() if v is not None}
  run = _naive if method == 'naive' else _cached
  with jax.default_matmul_precision(MATMUL_PRECISION):
    out = run(model, variables, rng, images.astype(jnp.int32),
              jnp.asarray(num_observed, jnp.int32),
              jnp.asarray(temperature, jnp.float32),
              'greedy' if temperature == 0 else 'sample', cond,
              jnp.asarray(fixed, bool))
  return out.astype(jnp.uint8)


# The coder of the running `run_coder` loop. The loop calls it through the
# module-level `_call_coder`, so the compiled loop is reused for every coder.
_coder_lock = threading.Lock()
_coder: Callable[[int, np.ndarray], np.ndarray] | None = None
_coder_error: list[BaseException] = []


def run_coder(model, variables, coder: Callable[[int, np.ndarray], np.ndarray],
              *, batch_size: int, image_shape: tuple[int, int, int],
              labels: np.ndarray | None = None) -> np.ndarray:
  """The cached sampler's loop with every sub-pixel's value chosen by a coder.

  At sub-pixel t (raster order, then channel) the loop calls
  ``coder(t, freqs)`` with ``freqs``, int32 [batch_size, 256]: the model's
  distribution of that sub-pixel for each image, quantised by
  `quantized_frequencies` inside the compiled loop. ``coder`` returns the
  int [batch_size] values to write (an encoder returns the image's values,
  a decoder the values it decodes). The device computation is the same
  compiled program for every coder of a given model, variables, batch size
  and image shape: given the same values (and ``labels``), it hands every
  coder bit-identical ``freqs``. Gated PixelCNNs, unconditional or
  class-conditional (``labels``: int [batch_size]). Returns the uint8 canvas
  [batch_size, H, W, C]. An exception raised by ``coder`` is re-raised.
  """
  global _coder
  H, W, C = image_shape
  if labels is not None:
    labels = jnp.asarray(labels, jnp.int32)
  _check(model, 'cached', image_shape, batch_size, labels, 1.0, None, None)
  _check_conditioning_params(model, variables, labels, None, None)
  canvas = jnp.zeros((batch_size, H, W, C), jnp.int32)
  # On GPUs XLA picks kernels by timing them; the coding program is compiled
  # without that autotuning so that every run computes the same floats.
  loop = _cached_gpu_untuned if jax.devices()[0].platform == 'gpu' else (
      _cached)
  with _coder_lock:   # one coder at a time (the callback reads _coder)
    _coder, _coder_error[:] = coder, []
    try:
      with jax.default_matmul_precision(MATMUL_PRECISION):
        out = loop(model, variables, jax.random.PRNGKey(0), canvas,
                   jnp.asarray(0, jnp.int32), jnp.asarray(1.0, jnp.float32),
                   'code', {} if labels is None else {'labels': labels},
                   jnp.zeros((H, W, C), bool))
      out = np.asarray(out).astype(np.uint8)
      error = _coder_error[0] if _coder_error else None
    finally:
      _coder, _coder_error[:] = None, []
    if error is not None:
      raise error
  return out


def _call_coder(t, freqs_Bx256) -> np.ndarray:
  """The host side of the loop's io_callback: the running coder's values."""
  B = freqs_Bx256.shape[0]
  if _coder_error:  # stop doing work after a failure; re-raised after
    return np.zeros(B, np.int32)
  try:
    values = np.asarray(_coder(int(t), np.asarray(freqs_Bx256)))
    if values.shape != (B,) or not np.issubdtype(values.dtype, np.integer) or (
        values.min() < 0 or values.max() >= model_parts.NUM_VALUES):
      raise ValueError(
          f'the coder returned {values!r} for sub-pixel {t}; expected {B} '
          f'integers in 0..{model_parts.NUM_VALUES - 1}.')
    return values.astype(np.int32)
  except Exception as e:  # pylint: disable=broad-except
    _coder_error.append(e)
    return np.zeros(B, np.int32)


def quantized_frequencies(logits_Bx256: Array,
                          precision_bits: int = PRECISION_BITS) -> Array:
  """softmax(logits) as integer frequencies, int32 [B, 256].

  Every value gets at least 1 (any value can be coded); the row sums to
  exactly 2**precision_bits: floor(p * (2**bits - 256)) + 1 for every value,
  the remainder added to the most likely one. This costs at most
  256 / 2**bits / ln 2 bits per sub-pixel over the model's own -log2 p
  (0.00035 at 20 bits).
  """
  n = logits_Bx256.shape[-1]
  total = 1 << precision_bits
  probs = jax.nn.softmax(logits_Bx256.astype(jnp.float32), axis=-1)
  freqs = jnp.floor(probs * (total - n)).astype(jnp.int32) + 1
  top = jnp.argmax(freqs, axis=-1)
  remainder = total - freqs.sum(axis=-1)
  return freqs + jnp.where(jnp.arange(n)[None] == top[:, None],
                           remainder[:, None], 0)


def complete_rows(model, variables, rng, images, num_rows: int, **kwargs):
  """`complete` with the top ``num_rows`` rows observed (PixelRNN occlusion)."""
  _, H, W, C = jnp.shape(images)
  if not 0 <= num_rows <= H:
    raise ValueError(f'num_rows = {num_rows} must be in 0..{H}.')
  return complete(model, variables, rng, images, num_rows * W * C, **kwargs)


def decoder_inputs(model, variables, h: Array, image_shape
                   ) -> tuple[models.GatedPixelCNN, dict, dict[str, Array]]:
  """The Gated PixelCNN inside a conditional model and its inputs for h.

  For `models.ConditionalPixelCNN` and `models.PixelCNNAutoEncoder` (whose h
  is ``model.apply(variables, images, method='encode')``): returns the
  decoder module, its variables and its ``cond_vector`` / ``cond_maps`` =
  m(h), ready for `sample` / `complete` with either method.
  """
  if not model.conditioned_on_images:
    raise ValueError(f'{type(model).__name__} is not a conditional model.')
  H, W, _ = image_shape
  inputs = model.apply(variables, jnp.asarray(h), H, W,
                       method='conditioning_inputs')
  return (model.decoder_module(), {'params': variables['params']['decoder']},
          inputs)


def _check(model, method, image_shape, batch, labels, temperature,
           cond_vector, cond_maps):
  if method not in METHODS:
    raise ValueError(f'method must be one of {METHODS}, got {method!r}.')
  if method == 'cached' and not model.cached_sampling:
    raise ValueError(
        f"method='cached' is implemented for GatedPixelCNN, not "
        f"{type(model).__name__}; use method='naive' (sample.method=naive).")
  H, W, C = image_shape
  if H < 1 or W < 1 or C != model.num_channels:
    raise ValueError(f'image_shape {image_shape} does not fit the model: it '
                     f'needs positive sizes and {model.num_channels} '
                     f'channel(s).')
  if not np.isfinite(temperature) or temperature < 0:
    raise ValueError(f'temperature must be > 0 (or 0 for the most likely '
                     f'value), got {temperature}.')
  if labels is not None:
    labels = jnp.asarray(labels)
  model_parts.check_conditioning(
      (batch, H, W, C), getattr(model, 'num_classes', 0), labels, cond_vector,
      cond_maps)


def _check_conditioning_params(model, variables, labels, cond_vector,
                               cond_maps):
  """Conditioning inputs given iff the model was built with them."""
  if not model.conditioning_in_block_0:
    return
  block = variables['params']['block_0']
  for name, given, key in (
      ('labels or cond_vector', labels is not None or cond_vector is not None,
       'global_cond'),
      ('cond_maps', cond_maps is not None, 'spatial_cond')):
    if given != (key in block):
      raise ValueError(
          f'{name} {"given" if given else "missing"}: these variables were '
          f'made {"without" if given else "with"} that conditioning input; '
          f'sample with the same conditioning inputs as at model.init.')


def _draw(rng, t, logits_Bx256, temperature, draw: str) -> Array:
  """The value of sub-pixel t for every image of the batch, int32 [B].

  ``draw``: 'sample' (from softmax(logits / temperature) with the key
  ``fold_in(rng, t)``), 'greedy' (argmax) or 'code' (what `run_coder`'s coder
  returns for the quantised distribution).
  """
  if draw == 'code':
    freqs = quantized_frequencies(logits_Bx256)
    return io_callback(_call_coder,
                       jax.ShapeDtypeStruct(freqs.shape[:1], jnp.int32), t,
                       freqs, ordered=True)
  if draw == 'greedy':
    return jnp.argmax(logits_Bx256, axis=-1).astype(jnp.int32)
  key = jax.random.fold_in(rng, t)
  return jax.random.categorical(key, logits_Bx256 / temperature,
                                axis=-1).astype(jnp.int32)


# ------------------------------------------------------------ naive method


@functools.partial(jax.jit, static_argnums=(0, 6))
def _naive(model, variables, rng, canvas, num_observed, temperature, draw,
           cond, fixed):
  B, H, W, C = canvas.shape

  def step(t, canvas):
    i, j, c = t // (W * C), (t // C) % W, t % C
    logits = model.apply(variables, canvas, **cond)
    value = _draw(rng, t, logits[:, i, j, c], temperature, draw)
    value = jnp.where(fixed[i, j, c], canvas[:, i, j, c], value)
    return canvas.at[:, i, j, c].set(value)

  return jax.lax.fori_loop(num_observed, H * W * C, step, canvas)


# ----------------------------------------------------------- cached method


@flax.struct.dataclass
class _Layer:
  """One gated layer's weights, masked and cast, in matmul-friendly shapes."""
  vertical: Array        # [r+1, k, I, 2p] vertical conv kernel
  vertical_bias: Array   # [2p]
  horizontal: Array      # [r+1, I, 2p] masked; tap r is the current pixel
  horizontal_bias: Array
  link: Array            # [2p, 2p] v->h 1x1 (no bias)
  skip: Array            # [p, p] masked
  skip_bias: Array
  residual: Array | None  # [p, p] masked, None in the last layer
  residual_bias: Array | None
  cond_v: Array          # [B, 2p] global conditioning of the vertical stack
  cond_h: Array          # [B, 2p] ... and of the horizontal stack
  maps: Array | None     # [S, 4p] spatial conditioning 1x1 (v half, h half)


@flax.struct.dataclass
class _Cache:
  """Per-layer state carried through the loop (lists over layers)."""
  vertical: list[Array]    # [B, r+1, W+2r, I]: the last r+1 rows of the
                           # vertical input, padded by r zero columns each side
  link: list[Array]        # [B, W, 2p]: link from the row above (0 in row 0)
  horizontal: list[Array]  # [B, r+1, p]: horizontal inputs at columns j-r..j
                           # of the current row, for layers 1..L-1 (layer 0
                           # reads the canvas itself)


def _mm(x, w, dtype):
  return jnp.matmul(x.astype(dtype), w.astype(dtype))


def _layer_weights(model, params, l, h_BxD, dtype) -> _Layer:
  """Reads layer l's parameters and applies the same masks as the model."""
  p, C = model.features, model.num_channels
  w = params[f'block_{l}']
  first, last = l == 0, l == model.num_layers - 1

  def masked_1x1(name):
    return layers.apply_mask(w[name]['kernel'], 'B', C)[0, 0]

  horizontal = layers.apply_mask(w['horizontal_conv']['kernel'],
                                 'A' if first else 'B', C, out_halves=2)[0]
  B = h_BxD.shape[0] if h_BxD is not None else 1
  if h_BxD is not None:
    cond = _mm(h_BxD, w['global_cond']['kernel'], dtype)
  else:
    cond = jnp.zeros((B, 4 * p), dtype)
  return _Layer(
      vertical=w['vertical_conv']['kernel'].astype(dtype),
      vertical_bias=w['vertical_conv']['bias'].astype(dtype),
      horizontal=horizontal.astype(dtype),
      horizontal_bias=w['horizontal_conv']['bias'].astype(dtype),
      link=w['v_to_h']['kernel'][0, 0].astype(dtype),
      skip=masked_1x1('skip').astype(dtype),
      skip_bias=w['skip']['bias'].astype(dtype),
      residual=None if last else masked_1x1('residual').astype(dtype),
      residual_bias=None if last else w['residual']['bias'].astype(dtype),
      cond_v=cond[:, :2 * p], cond_h=cond[:, 2 * p:],
      maps=(w['spatial_cond']['kernel'][0, 0].astype(dtype)
            if 'spatial_cond' in w else None))


def _cached_loop(model, variables, rng, canvas, num_observed, temperature,
                 draw, cond, fixed):
  """Rows, then pixels, then channels: caches as in the module docstring."""
  B, H, W, C = canvas.shape
  p, L = model.features, model.num_layers
  dtype = jnp.dtype(model.dtype)
  params = variables['params']
  h_BxD = model_parts.global_condition(cond.get('labels'), model.num_classes,
                                  cond.get('cond_vector'))
  weights = [_layer_weights(model, params, l, h_BxD, dtype) for l in range(L)]
  radius = [(model.first_kernel_size if l == 0 else model.kernel_size) // 2
            for l in range(L)]
  maps = cond.get('cond_maps')
  head = params['head']
  head_hidden = layers.apply_mask(head['hidden']['kernel'], 'B', C)[0, 0]
  head_logits = layers.apply_mask(head['logits']['kernel'], 'B', C)[0, 0]

  def spatial(w, half, i, j=None):
    """Spatial conditioning of row i (or pixel (i, j)): the v or h half."""
    if w.maps is None:
      return 0.0
    k = w.maps[:, :2 * p] if half == 'v' else w.maps[:, 2 * p:]
    s = maps[:, i] if j is None else jax.lax.dynamic_index_in_dim(
        maps[:, i], j, 1, keepdims=False)
    return _mm(s, k, dtype)

  def vertical_row(i, canvas, cache: _Cache) -> _Cache:
    """Pushes row i - 1 through the vertical stack: caches and links."""
    v_in = model_parts.scale_images(canvas[:, i - 1])            # [B, W, C]
    new_v, new_link = [], []
    for l, w in enumerate(weights):
      r = radius[l]
      row = jnp.pad(v_in.astype(dtype), ((0, 0), (r, r), (0, 0)))
      buf = jnp.concatenate([cache.vertical[l][:, 1:], row[:, None]], axis=1)
      # The (r+1) x k vertical conv at row i - 1: one VALID output row.
      v_pre = jax.lax.conv_general_dilated(
          buf, w.vertical, (1, 1), 'VALID',
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))[:, 0]
      v_pre = v_pre + w.vertical_bias[None, None]
      new_v.append(buf)
      new_link.append(_mm(v_pre, w.link, dtype))
      if l < L - 1:  # the last layer's vertical output is never used
        v_in = layers.gate(v_pre + w.cond_v[:, None] + spatial(w, 'v', i - 1))
    return cache.replace(vertical=new_v, link=new_link)

  def left_of_pixel(i, j, canvas, cache: _Cache) -> list[Array]:
    """Per layer, everything in h_pre that this pixel's channels cannot change.

    That is the horizontal conv's taps left of the current pixel (final once
    the pixel starts), the bias, the link from the row above and the
    conditioning: computed once per pixel.
    """
    r0 = radius[0]
    row = jnp.pad(model_parts.scale_images(canvas[:, i]),
                  ((0, 0), (r0, 0), (0, 0)))
    left = jax.lax.dynamic_slice_in_dim(row, j, r0, axis=1)   # [B, r0, C]
    out = []
    for l, w in enumerate(weights):
      if l > 0:
        left = cache.horizontal[l - 1][:, :-1]
      h_pre = jnp.einsum('btp,tpo->bo', left.astype(dtype), w.horizontal[:-1])
      link = jax.lax.dynamic_index_in_dim(cache.link[l], j, 1, keepdims=False)
      h_pre = h_pre + w.horizontal_bias[None] + link + w.cond_h
      out.append(h_pre + spatial(w, 'h', i, j))
    return out

  def channel_step(i, j, c, canvas, cache: _Cache, left: list[Array]):
    """The horizontal stack at the current pixel only: its last conv tap and
    the 1x1s; then draws sub-pixel (i, j, c)."""
    h_cur = model_parts.scale_images(canvas[:, i, j]).astype(dtype)   # [B, C]
    horizontal = list(cache.horizontal)
    skips = 0.0
    for l, w in enumerate(weights):
      if l > 0:
        horizontal[l - 1] = horizontal[l - 1].at[:, -1].set(h_cur)
      gated = layers.gate(left[l] + _mm(h_cur, w.horizontal[-1], dtype))
      skips = skips + _mm(gated, w.skip, dtype) + w.skip_bias[None]
      if l < L - 1:
        h_out = _mm(gated, w.residual, dtype) + w.residual_bias[None]
        h_cur = h_out if l == 0 else h_out + h_cur
    hidden = jax.nn.relu(_mm(jax.nn.relu(skips), head_hidden, dtype)
                         + head['hidden']['bias'].astype(dtype)[None])
    logits = _mm(hidden, head_logits, jnp.float32) + head['logits']['bias'][None]
    logits = logits.reshape(B, C, model_parts.NUM_VALUES)[:, c]
    t = (i * W + j) * C + c
    value = _draw(rng, t, logits, temperature, draw)
    value = jnp.where((t < num_observed) | fixed[i, j, c], canvas[:, i, j, c],
                      value)
    return canvas.at[:, i, j, c].set(value), cache.replace(
        horizontal=horizontal)

  def pixel(j, carry, i):
    canvas, cache = carry
    # Shift the horizontal caches one column left; the new slot receives
    # this pixel's inputs during its channel steps.
    cache = cache.replace(horizontal=[
        jnp.pad(h[:, 1:], ((0, 0), (0, 1), (0, 0))) for h in cache.horizontal])
    left = left_of_pixel(i, j, canvas, cache)
    for c in range(C):
      canvas, cache = channel_step(i, j, c, canvas, cache, left)
    return canvas, cache

  def row(i, carry):
    canvas, cache = carry
    cache = jax.lax.cond(i > 0, vertical_row, lambda i, canvas, c: c,
                         i, canvas, cache)
    # Columns left of the image are zero padding.
    cache = cache.replace(horizontal=[jnp.zeros_like(h)
                                      for h in cache.horizontal])
    return jax.lax.fori_loop(0, W, functools.partial(pixel, i=i),
                             (canvas, cache))

  width_in = [C] + [p] * (L - 1)
  cache = _Cache(
      vertical=[jnp.zeros((B, radius[l] + 1, W + 2 * radius[l], width_in[l]),
                          dtype) for l in range(L)],
      link=[jnp.zeros((B, W, 2 * p), dtype) for _ in range(L)],
      horizontal=[jnp.zeros((B, radius[l] + 1, p), dtype)
                  for l in range(1, L)])
  canvas, _ = jax.lax.fori_loop(0, H, row, (canvas, cache))
  return canvas


_cached = jax.jit(_cached_loop, static_argnums=(0, 6))
_cached_gpu_untuned = jax.jit(_cached_loop, static_argnums=(0, 6),
                              compiler_options={'xla_gpu_autotune_level': 0})
