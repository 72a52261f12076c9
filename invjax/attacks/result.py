"""The result type every invjax attack returns.

`AttackResult` is a pytree (a `flax.struct.dataclass`), so attacks can return it
from inside `jax.jit` and callers can `jax.tree.map` over it. All per-example
fields are batch-first. `success` is always *re-checked on the model*: it is the
argmax of `logits_fn(x_adv)` compared with the label (or the target), never a
flag carried along by the optimiser, so an attack that fails on an example says
so instead of silently returning the input.

Use `from_adversarial` to build one: it computes the distances and the success
mask from `x`, `x_adv` and the model.
"""
from __future__ import annotations

from typing import Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp

from invjax._src.geometry import flat_norm


@flax.struct.dataclass
class AttackResult:
  """Outcome of an attack on a batch.

  Attributes:
    x_adv: adversarial inputs, same shape and dtype as the clean inputs `x`.
    success: bool [batch]; True where `argmax logits_fn(x_adv)` differs from the
      label (untargeted) or equals the target (targeted).
    linf: float [batch]; `max |x_adv - x|` per example.
    l2: float [batch]; `||x_adv - x||_2` per example.
    num_grad_evals: int32 scalar or [batch]; gradient evaluations of the model
      (a forward+backward pass through `logits_fn`) spent by the attack.
    num_forward_evals: int32 scalar or [batch]; forward-only evaluations
      (e.g. encoder passes of a latent attack, success re-checks excluded).
    num_inverse_evals: int32 scalar or [batch]; evaluations of an inverse
      (decoder) of an invertible model; 0 for pixel-space attacks.
  """
  x_adv: jax.Array
  success: jax.Array
  linf: jax.Array
  l2: jax.Array
  num_grad_evals: jax.Array
  num_forward_evals: jax.Array
  num_inverse_evals: jax.Array

  @property
  def success_rate(self) -> jax.Array:
    """Fraction of the batch on which the attack succeeded (float scalar)."""
    return jnp.mean(self.success.astype(jnp.float32))

  def summary(self) -> dict:
    """Python floats for logging: success rate and mean/median distances over successes."""
    success = jnp.asarray(self.success)
    n_ok = jnp.sum(success)
    denom = jnp.maximum(n_ok, 1)
    return {
        "success_rate": float(self.success_rate),
        "mean_linf_success": float(jnp.sum(jnp.where(success, self.linf, 0.0)) / denom),
        "mean_l2_success": float(jnp.sum(jnp.where(success, self.l2, 0.0)) / denom),
        "num_grad_evals": float(jnp.mean(jnp.asarray(self.num_grad_evals))),
        "num_forward_evals": float(jnp.mean(jnp.asarray(self.num_forward_evals))),
        "num_inverse_evals": float(jnp.mean(jnp.asarray(self.num_inverse_evals))),
    }


def distances(x: jax.Array, x_adv: jax.Array):
  """Per-example L_inf and L2 distances between two batches of the same shape.

  Args:
    x: [batch, ...] clean inputs.
    x_adv: [batch, ...] perturbed inputs.

  Returns:
    (linf, l2), each float [batch].
  """
  delta = (x_adv - x).reshape(x.shape[0], -1)
  linf = flat_norm(delta, "linf") if delta.shape[1] else jnp.zeros(x.shape[0], x.dtype)
  return linf, flat_norm(delta, "l2")


def is_adversarial(logits: jax.Array, y: jax.Array, *, targeted: bool = False) -> jax.Array:
  """bool [batch]: `argmax(logits) != y` (untargeted) or `== y` (targeted, y = target)."""
  pred = jnp.argmax(logits, axis=-1)
  return pred == y if targeted else pred != y


def from_adversarial(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
                     x_adv: jax.Array, y: jax.Array, *, targeted: bool = False,
                     num_grad_evals=0, num_forward_evals=0, num_inverse_evals=0,
                     logits_adv: Optional[jax.Array] = None) -> AttackResult:
  """Builds an `AttackResult`, re-checking success on the model.

  Args:
    logits_fn: the attacked model, `[batch, ...] -> [batch, classes]`.
    x: [batch, ...] clean inputs.
    x_adv: [batch, ...] adversarial candidates.
    y: int [batch] true labels (untargeted) or target classes (targeted).
    targeted: whether `y` holds targets.
    num_grad_evals, num_forward_evals, num_inverse_evals: cost counters.
    logits_adv: `logits_fn(x_adv)` if the caller already has it (saves a pass).

  Returns:
    The `AttackResult`; jit-able.
  """
  if logits_adv is None:
    logits_adv = logits_fn(x_adv)
  linf, l2 = distances(x, x_adv)
  as_int = lambda n: jnp.asarray(n, jnp.int32)
  return AttackResult(
      x_adv=x_adv,
      success=is_adversarial(logits_adv, y, targeted=targeted),
      linf=linf, l2=l2,
      num_grad_evals=as_int(num_grad_evals),
      num_forward_evals=as_int(num_forward_evals),
      num_inverse_evals=as_int(num_inverse_evals))
