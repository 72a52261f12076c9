"""Composition of flow layers.

Every flow layer in invjax follows one contract:
  y, log_det = layer.apply(variables, x)                       # log|det dy/dx|, shape [batch]
  x, log_det_inv = layer.apply(variables, y, method="inverse")  # log|det dx/dy| = -log_det

`apply_layers` / `invert_layers` compose bound layers inside a module (`Chain`, `IRevNet`);
`pixelwise_log_det` is the log-det of a map applied to every pixel alike (ActNorm, 1x1 conv).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp


def apply_layers(layers: Sequence[nn.Module], x: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Applies `layers` in order: `(y, sum of their log-dets [batch])`."""
  total = jnp.zeros((x.shape[0],), jnp.result_type(x))
  for layer in layers:
    x, log_det = layer(x)
    total = total + log_det
  return x, total


def invert_layers(layers: Sequence[nn.Module], y: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Applies the inverses of `layers` in reverse order: `(x, sum of their log-dets [batch])`."""
  total = jnp.zeros((y.shape[0],), jnp.result_type(y))
  for layer in reversed(layers):
    y, log_det = layer.inverse(y)
    total = total + log_det
  return y, total


def pixelwise_log_det(x: jax.Array, log_det_per_pixel: jax.Array) -> jax.Array:
  """`[batch]` log-det of a map acting on each pixel of NHWC `x` (or on each `[batch, C]` row)
  with the same Jacobian, whose log-det is `log_det_per_pixel`: `H * W` times it for images."""
  pixels = x.shape[1] * x.shape[2] if x.ndim == 4 else 1
  return jnp.full((x.shape[0],), pixels * log_det_per_pixel, jnp.result_type(x))


class Chain(nn.Module):
  """Applies `layers` in order; the inverse applies their inverses in reverse order."""
  layers: Sequence[nn.Module]

  def __call__(self, x):
    return apply_layers(self.layers, x)

  def inverse(self, y):
    return invert_layers(self.layers, y)
