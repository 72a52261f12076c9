"""1-Lipschitz activations for invertible residual blocks: LipSwish and ELU.

LipSwish (Residual Flows, Chen et al. 2019) is `x * sigmoid(beta * x) / 1.1`. For every
`beta >= 0` the slope of `x * sigmoid(beta * x)` lies in about `[-0.0998, 1.0998]`, so
dividing by 1.1 makes it 1-Lipschitz. `beta = softplus(raw_beta)` keeps it positive;
`raw_beta` is a learnable parameter initialised to 0.5 as in the reference code. ELU is
1-Lipschitz as it is (slope `min(1, exp(x))`).
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax

from invjax._src import checks

Array = jax.Array


def lipswish(x: Array, beta: Array | float = 1.0) -> Array:
  """`x * sigmoid(beta * x) / 1.1`, elementwise; 1-Lipschitz for `beta >= 0`."""
  return x * jax.nn.sigmoid(beta * x) / 1.1


def elu(x: Array) -> Array:
  """ELU with alpha = 1, elementwise; 1-Lipschitz."""
  return jax.nn.elu(x)


class LipSwish(nn.Module):
  """LipSwish with a learnable scalar `beta = softplus(raw_beta)` (param `"raw_beta"`)."""
  raw_beta_init: float = 0.5

  @nn.compact
  def __call__(self, x: Array) -> Array:
    raw = self.param("raw_beta", nn.initializers.constant(self.raw_beta_init), (), x.dtype)
    return lipswish(x, jax.nn.softplus(raw))


class ELU(nn.Module):
  """ELU (no parameters), as a module so activations are interchangeable by name."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return elu(x)


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"lipswish": LipSwish, "elu": ELU}


def get_activation(name: str) -> nn.Module:
  """A fresh activation module by name (`"lipswish"` or `"elu"`)."""
  if name not in ACTIVATIONS:
    raise checks.InvjaxError(
        f"activation must be one of {sorted(ACTIVATIONS)} (1-Lipschitz activations), got {name!r}")
  return ACTIVATIONS[name]()
