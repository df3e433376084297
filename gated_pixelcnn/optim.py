"""The optimizer: RMSProp (the paper's) or Adam, with the learning-rate
schedule and gradient clipping of the config."""

from __future__ import annotations

import optax

OPTIMIZERS = {
    # The paper trains with RMSProp.
    'rmsprop': lambda lr, c: optax.rmsprop(lr, decay=c.rmsprop_decay,
                                           eps=c.rmsprop_eps),
    'adam': lambda lr, c: optax.adam(lr),
    # Adam with decoupled weight decay (config.weight_decay).
    'adamw': lambda lr, c: optax.adamw(lr, weight_decay=c.get(
        'weight_decay', 0.0)),
}
# After the linear warm-up: constant; cosine decay to 0 at num_train_steps;
# or 'wsd' (warm-up, stable, decay): constant, then linear decay to 0 over
# the last config.decay_fraction of the steps.
SCHEDULES = ('constant', 'cosine', 'wsd')


def create_optimizer(config) -> tuple[optax.GradientTransformation,
                                      optax.Schedule]:
  """The optimizer with its learning-rate schedule and gradient clipping."""
  if config.lr_schedule == 'cosine':
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.warmup_steps,
        max(config.num_train_steps, config.warmup_steps + 1))
  elif config.lr_schedule == 'wsd':
    decay = max(1, round(config.num_train_steps * config.decay_fraction))
    stable = max(config.num_train_steps - decay, config.warmup_steps)
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, config.learning_rate,
                               config.warmup_steps),
         optax.constant_schedule(config.learning_rate),
         optax.linear_schedule(config.learning_rate, 0.0, decay)],
        [config.warmup_steps, stable])
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
