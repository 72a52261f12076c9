"""Ball geometry shared by the attacks, the poisoning steps and the Lipschitz bounds.

Batch-first arrays: every function treats axis 0 as the batch and the rest as one vector.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

TINY = 1e-12  # floor under norms we divide by

NORMS = ("linf", "l2")


def per_example(v, batch_ndim: int) -> jax.Array:
  """Broadcasts a scalar or [batch] value to [batch, 1, ..., 1] (rank `batch_ndim`)."""
  v = jnp.asarray(v, jnp.float32)
  return v.reshape(v.shape + (1,) * (batch_ndim - v.ndim))


def flat_norm(d: jax.Array, norm: str) -> jax.Array:
  """Per-example `norm` ("l2" or "linf") of [batch, ...] -> [batch]."""
  d = d.reshape(d.shape[0], -1)
  if norm == "l2":
    return jnp.sqrt(jnp.sum(jnp.square(d), axis=1))
  return jnp.max(jnp.abs(d), axis=1)


def l2_norm(v: jax.Array) -> jax.Array:
  """Per-example L2 norm, shape [batch, 1, ..., 1] (broadcastable against v)."""
  axes = tuple(range(1, v.ndim))
  return jnp.sqrt(jnp.sum(jnp.square(v), axis=axes, keepdims=True))


def unit_l2(v: jax.Array) -> jax.Array:
  """`v / ||v||_2` per example (0 stays 0)."""
  return v / jnp.maximum(l2_norm(v), TINY)


def project(x_adv: jax.Array, x: jax.Array, epsilon: Optional[jax.Array], norm: str, *,
            clip: bool = True) -> jax.Array:
  """Projects `x_adv` onto {x' : ||x' - x|| <= epsilon} and then (with `clip`) onto [0, 1].

  For L_inf this is the exact Euclidean projection onto the intersection (a box within a box).
  For L2 the ball projection comes first; since `x` lies in [0, 1], clipping then only shrinks
  |x' - x| coordinate-wise, so the result stays inside the ball.

  Args:
    x_adv: [batch, ...] candidates.
    x: [batch, ...] clean inputs, in [0, 1].
    epsilon: scalar or [batch] radius, or None for no ball.
    norm: "linf" or "l2".
    clip: clip to [0, 1] afterwards.

  Returns:
    [batch, ...] projected inputs.
  """
  if epsilon is not None:
    eps = per_example(epsilon, x.ndim)
    delta = x_adv - x
    if norm == "linf":
      delta = jnp.clip(delta, -eps, eps)
    else:
      delta = delta * jnp.minimum(1.0, eps / jnp.maximum(l2_norm(delta), TINY))
    x_adv = x + delta
  return jnp.clip(x_adv, 0.0, 1.0) if clip else x_adv


def logit_margin(logits: jax.Array, y: jax.Array) -> jax.Array:
  """`logits[y] - max_{j != y} logits[j]` per example (negative when misclassified).

  [batch, K] scores and int [batch] labels -> float [batch].
  """
  onehot = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
  true = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
  other = jnp.max(jnp.where(onehot, -jnp.inf, logits), axis=-1)
  return true - other
