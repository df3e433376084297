"""The optimizer: RMSProp (the paper's) or Adam, with the learning-rate
schedule and gradient clipping of the config."""

from __future__ import annotations

import optax

OPTIMIZERS = {
    # The paper trains with RMSProp.
    'rmsprop': lambda lr, c: optax.rmsprop(lr, decay=c.rmsprop_decay,
                                           eps=c.rmsprop_eps),
    'adam': lambda lr, c: optax.adam(lr),
}
SCHEDULES = ('constant', 'cosine')


def create_optimizer(config) -> tuple[optax.GradientTransformation,
                                      optax.Schedule]:
  """The optimizer with its learning-rate schedule and gradient clipping."""
  if config.lr_schedule == 'cosine':
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.warmup_steps,
        max(config.num_train_steps, config.warmup_steps + 1))
  else:
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, config.learning_rate,
                               config.warmup_steps),
         optax.constant_schedule(config.learning_rate)],
        [config.warmup_steps])
  chain = []
  if config.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
  chain.append(OPTIMIZERS[config.optimizer](schedule, config))
  return optax.chain(*chain), schedule
