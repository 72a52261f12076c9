"""Critics for variational mutual-information bounds: Flax modules scoring every (x_i, y_j) pair.

  critic = SeparableCritic(hidden=(64, 64), embed_dim=32)
  params = critic.init(key, x, y)
  scores = critic.apply(params, x, y)       # [n, n], scores[i, j] = T(x_i, y_j)

The diagonal holds the joint samples (x_i, y_i) ~ p(x, y); the off-diagonal pairs stand in for
samples of p(x) p(y). Both critics return the full matrix, which is what the bounds of
`invjax.information.variational` take.

* `SeparableCritic`: T(x, y) = f(x)^T g(y), two MLPs; n forward passes for n^2 scores
  (Oord et al. 2018's CPC critic).
* `ConcatCritic`: T(x, y) = MLP([x, y]), one MLP on all n^2 concatenated pairs (MINE's critic,
  Belghazi et al. 2018); more expressive, n times the cost.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from invjax._src.checks import InvjaxError


class MLP(nn.Module):
  """Dense layers with ReLU between them; `features[-1]` outputs, no final activation."""
  features: Sequence[int]

  @nn.compact
  def __call__(self, x):
    for i, width in enumerate(self.features):
      x = nn.Dense(width)(x)
      if i < len(self.features) - 1:
        x = nn.relu(x)
    return x


def _check_pair(x, y) -> None:
  if x.ndim != 2 or y.ndim != 2:
    raise InvjaxError(f"critics take x [n, dx] and y [m, dy], got {x.shape} and {y.shape}")


class SeparableCritic(nn.Module):
  """scores[i, j] = f(x_i) . g(y_j) with f, g MLPs of widths `hidden` + (embed_dim,)."""
  hidden: Sequence[int] = (64, 64)
  embed_dim: int = 32

  @nn.compact
  def __call__(self, x, y):
    _check_pair(x, y)
    widths = tuple(self.hidden) + (self.embed_dim,)
    fx = MLP(widths, name="f")(x)
    gy = MLP(widths, name="g")(y)
    return fx @ gy.T


class ConcatCritic(nn.Module):
  """scores[i, j] = MLP([x_i, y_j]) with widths `hidden` + (1,)."""
  hidden: Sequence[int] = (64, 64)

  @nn.compact
  def __call__(self, x, y):
    _check_pair(x, y)
    n, m = x.shape[0], y.shape[0]
    pairs = jnp.concatenate([jnp.repeat(x[:, None, :], m, axis=1),
                             jnp.repeat(y[None, :, :], n, axis=0)], axis=-1)
    return MLP(tuple(self.hidden) + (1,), name="t")(pairs.reshape(n * m, -1)).reshape(n, m)
