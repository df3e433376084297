"""The pure training and evaluation steps: the train state, each model
objective's per-example loss and metric, micro-batched gradients and the
moving average of the parameters. train.Trainer jits them on a mesh."""

from __future__ import annotations

import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from gated_pixelcnn import likelihood


@flax.struct.dataclass
class TrainState:
  """Everything needed to resume training exactly."""
  step: jax.Array          # int32 scalar: updates applied so far
  params: Any
  opt_state: Any
  ema_params: Any          # zero-started moving average of params, or None
  rng: jax.Array           # uint32[2] key for stochastic work (samples)


def eval_params(state: TrainState, ema_decay: float):
  """The parameters to evaluate and sample with: the moving average if one
  is kept, bias-corrected (m_t / (1 - d^t), Adam's correction), which is
  exactly the average of params_1..params_t weighted by d^(t-i): right from
  the first step, where an average started at the initial parameters would
  still be mostly them (0.999^600 = 55% after 600 steps)."""
  if state.ema_params is None:
    return state.params
  step = state.step.astype(jnp.float32)
  weight = 1.0 - jnp.power(jnp.float32(ema_decay), step)
  return jax.tree_util.tree_map(
      lambda m, p: jnp.where(step > 0, m / jnp.maximum(weight, 1e-30), p),
      state.ema_params, state.params)


def model_kwargs(model, batch) -> dict[str, Any]:
  kwargs = {'labels': batch['label']} if model.num_classes else {}
  if 'cond' in batch:
    kwargs['cond'] = batch['cond']
  return kwargs


# What each model objective reports: the metric's name and the per-example
# loss's unit (the metric is the mean per-example loss divided by it).
METRICS = {'likelihood': 'bits_per_dim', 'mse': 'mse',
           'triplet': 'triplet_loss'}
TRIPLET_MARGIN = 0.2


def metric_name(model) -> str:
  return METRICS[model.objective]


def metric_scale(model, image_shape) -> float:
  dims = math.prod(image_shape)
  return {'likelihood': dims * math.log(2.0), 'mse': float(dims),
          'triplet': 1.0}[model.objective]


def triplet_losses(embeddings_BxD: jax.Array, labels_B: jax.Array,
                   valid_B: jax.Array | None = None,
                   margin: float = TRIPLET_MARGIN) -> jax.Array:
  """Triplet loss per anchor, float32 [B], over all triplets in the batch.

  For anchor a: the mean of relu(d(a, p) - d(a, n) + margin) over every
  same-label p != a and other-label n of the batch ("batch all"; mining only
  the hardest triplet collapses the embedding on this data). Anchors without
  a positive or a negative, and invalid ones, get 0.
  """
  e = embeddings_BxD.astype(jnp.float32)
  d2 = jnp.sum((e[:, None] - e[None, :])**2, axis=-1)
  d = jnp.sqrt(jnp.maximum(d2, 1e-12))
  B = e.shape[0]
  valid = jnp.ones((B,), bool) if valid_B is None else valid_B.astype(bool)
  pair = valid[:, None] & valid[None, :]
  same = labels_B[:, None] == labels_B[None, :]
  pos = same & ~jnp.eye(B, dtype=bool) & pair                   # [a, p]
  neg = ~same & pair                                             # [a, n]
  use = pos[:, :, None] & neg[:, None, :]                        # [a, p, n]
  hinge = jax.nn.relu(d[:, :, None] - d[:, None, :] + margin)
  total = jnp.sum(jnp.where(use, hinge, 0.0), axis=(1, 2))
  count = jnp.sum(use, axis=(1, 2))
  return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)


def per_example_loss(model, params, batch, nll_mask=None) -> jax.Array:
  """float32 [B]: nats (likelihood), squared error summed over the image
  in pixel units (mse) or the triplet loss (triplet)."""
  images = batch['image']
  out = model.apply({'params': params}, images, **model_kwargs(model, batch))
  if model.objective == 'likelihood':
    return -likelihood.log_prob(out, images, nll_mask)
  if model.objective == 'mse':
    return jnp.sum((out - images.astype(jnp.float32))**2, axis=(1, 2, 3))
  return triplet_losses(out, batch['label'], batch.get('mask'))


def _microbatches(batch: dict[str, jax.Array], num: int
                  ) -> dict[str, jax.Array]:
  """[B, ...] -> [num, B / num, ...]; micro-batch m holds rows m, m + num, ...

  Strided, so that every device keeps its own rows (each device holds a
  contiguous block of B / devices rows, a multiple of ``num``) and the split
  needs no communication.
  """
  def split(x):
    x = x.reshape(x.shape[0] // num, num, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree_util.tree_map(split, batch)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model, tx,
               schedule, ema_decay: float, microbatches: int = 1,
               nll_mask=None) -> tuple[TrainState, dict]:
  """One update on the mean loss (bits/dim for likelihood models) of the
  (global) batch; ``nll_mask`` [H, W, C] leaves given sub-pixels out.

  With ``microbatches`` > 1 the batch is processed in that many equal parts,
  unrolled, and their gradients averaged: the same update. On CPUs each
  part's working set then stays in cache (bench/train.py). XLA schedules
  the parts together, so it does not lower peak memory.
  """

  scale = metric_scale(model, batch['image'].shape[1:])

  def loss_fn(params, part):
    return per_example_loss(model, params, part, nll_mask).mean() / scale

  if microbatches == 1:
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
  else:
    # Unrolled: XLA:CPU runs convolutions inside a `lax.scan` body about 10x
    # slower than at the top level.
    parts = _microbatches(batch, microbatches)
    total = None
    for m in range(microbatches):
      part = jax.tree_util.tree_map(lambda x, m=m: x[m], parts)
      value = jax.value_and_grad(loss_fn)(state.params, part)
      total = value if total is None else jax.tree_util.tree_map(
          jnp.add, total, value)
    loss, grads = jax.tree_util.tree_map(lambda x: x / microbatches, total)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if ema is not None:   # m_t = d m_{t-1} + (1 - d) params_t, m_0 = 0
    ema = optax.incremental_update(params, ema, 1.0 - ema_decay)
  metrics = {metric_name(model): loss, 'grad_norm': optax.tree.norm(grads),
             'learning_rate': schedule(state.step)}
  return state.replace(step=state.step + 1, params=params,
                       opt_state=opt_state, ema_params=ema), metrics


def eval_step(params, batch: dict[str, jax.Array], *, model,
              nll_mask=None) -> dict:
  """Sum of per-example losses (nats for likelihood models) and number of
  real (unmasked) images in the batch."""
  losses = per_example_loss(model, params, batch, nll_mask)
  mask = batch['mask']
  return {'total': jnp.where(mask, losses, 0.0).sum(),
          'count': mask.sum().astype(jnp.int32)}
