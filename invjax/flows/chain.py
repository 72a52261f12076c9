"""Composition of flow layers.

Every flow layer in invjax follows one contract:
  y, log_det = layer.apply(variables, x)                       # log|det dy/dx|, shape [batch]
  x, log_det_inv = layer.apply(variables, y, method="inverse")  # log|det dx/dy| = -log_det
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class Chain(nn.Module):
  """Applies `layers` in order; the inverse applies their inverses in reverse order."""
  layers: Sequence[nn.Module]

  def __call__(self, x):
    total = jnp.zeros((x.shape[0],), jnp.result_type(x))
    for layer in self.layers:
      x, log_det = layer(x)
      total = total + log_det
    return x, total

  def inverse(self, y):
    total = jnp.zeros((y.shape[0],), jnp.result_type(y))
    for layer in reversed(self.layers):
      y, log_det = layer.inverse(y)
      total = total + log_det
    return y, total
