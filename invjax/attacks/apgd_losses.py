"""The losses Auto-PGD maximises (Croce & Hein 2020): cross-entropy and the DLR loss.

The scale-invariant DLR (difference of logits ratio) loss
  DLR(z, y) = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3),
with z_pi1 >= z_pi2 >= ... the sorted logits: invariant to shifting and to positive scaling
of the logits (numerator and denominator are logit differences, scaled alike), so scaling
the logits up, which saturates the softmax and makes the cross-entropy's gradient vanish,
leaves it unchanged (the paper's Section 3.2); the denominator vanishes only when the three
largest logits tie (`geometry.TINY` guards the division). Its targeted form (towards class
t), used by APGD-T,
  DLR_t(z, y) = -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2).
Untargeted DLR needs >= 3 classes, targeted DLR >= 4. `attack_loss` picks the per-example
loss `invjax.attacks.autopgd` ascends: CE(y) or DLR untargeted, -CE(t) or DLR_t targeted.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from invjax._src import geometry

LOSSES = ("ce", "dlr")


def dlr_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Untargeted DLR loss (to maximise), float [batch]; needs >= 3 classes."""
  top = -jnp.sort(-logits, axis=-1)
  margin = geometry.logit_margin(logits, y)
  return -margin / (top[:, 0] - top[:, 2] + geometry.TINY)


def dlr_targeted_loss(logits: jax.Array, y: jax.Array, target: jax.Array) -> jax.Array:
  """Targeted DLR loss towards `target` (to maximise), float [batch]; needs >= 4 classes."""
  top = -jnp.sort(-logits, axis=-1)
  pick = lambda c: jnp.take_along_axis(logits, c[:, None], axis=-1)[:, 0]
  return -(pick(y) - pick(target)) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + geometry.TINY)


def attack_loss(logits: jax.Array, y: jax.Array, target: jax.Array, loss: str,
                targeted: bool) -> jax.Array:
  """The per-example loss to maximise, float [batch]: `loss` ("ce" or "dlr", static) for the
  true labels `y`, or (`targeted`, static) towards `target` (int [batch])."""
  if loss == "ce":
    if targeted:
      return -optax.softmax_cross_entropy_with_integer_labels(logits, target)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)
  return dlr_targeted_loss(logits, y, target) if targeted else dlr_loss(logits, y)
