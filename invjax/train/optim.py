"""The optimizer the launch configs describe: AdamW with warm-up, cosine decay and clipping."""
from __future__ import annotations

import optax

from invjax._src.checks import InvjaxError

# The keyword options of `make_optimizer` a config may set (`optimizer_kwargs` picks them).
OPTIMIZER_OPTIONS = ("learning_rate", "num_steps", "warmup_steps", "grad_clip", "weight_decay",
                     "final_lr_fraction", "schedule")


def make_optimizer(*, learning_rate: float, num_steps: int, warmup_steps: int = 0,
                   grad_clip: float = 1.0, weight_decay: float = 0.0,
                   final_lr_fraction: float = 0.0,
                   schedule: str = "warmup_cosine") -> optax.GradientTransformation:
  """Global-norm gradient clipping, then AdamW.

  Args:
    learning_rate: peak learning rate.
    num_steps: training steps (the cosine decay ends there).
    warmup_steps: linear warm-up from 0 (at least one step with "warmup_cosine").
    grad_clip: maximal global gradient norm.
    weight_decay: decoupled weight decay (0: plain Adam).
    final_lr_fraction: learning rate at the end of the decay, as a fraction of the peak.
    schedule: "warmup_cosine", or "constant" (`learning_rate` throughout).
  """
  if schedule == "constant":
    lr = learning_rate
  elif schedule == "warmup_cosine":
    if num_steps > 1 and warmup_steps >= num_steps:
      raise InvjaxError(
          f"warmup_steps ({warmup_steps}) must be smaller than num_steps "
          f"({num_steps}): the cosine decay after the warm-up would have no steps")
    lr = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, max(1, warmup_steps), max(2, num_steps),
        end_value=learning_rate * final_lr_fraction)
  else:
    raise InvjaxError(f"schedule must be 'warmup_cosine' or 'constant', got {schedule!r}")
  return optax.chain(optax.clip_by_global_norm(grad_clip),
                     optax.adamw(lr, weight_decay=weight_decay))


def optimizer_kwargs(config) -> dict:
  """The `OPTIMIZER_OPTIONS` a config (dict or ConfigDict) sets, as `make_optimizer` keywords."""
  return {k: config[k] for k in OPTIMIZER_OPTIONS if k in config}
