"""An invertible classifier as pure `(params, value)` functions, shared by the latent and
invariance attacks.

The jitted cores take `encode`, `decode` and `head_fn` as static arguments of the form
`fn(params, value)`. The wrappers are cached, so the same user function (or the same
model and method) gives the same wrapper and the core compiles once.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax

from invjax._src import checks

Array = jax.Array


@functools.lru_cache(maxsize=None)
def drop_params(fn: Callable[[Array], Array]) -> Callable[[Any, Array], Array]:
  """`fn(value)` as `(params, value) -> fn(value)` (the params are ignored)."""
  return lambda _, v: fn(v)


@functools.lru_cache(maxsize=None)
def model_method(model: Any, method: str) -> Callable[[Any, Array], Array]:
  """`(variables, value) -> model.apply(variables, value, method=method)`."""
  return lambda variables, v: model.apply(variables, v, method=method)


def apply_head(head_params, head_fn, z: Array) -> Array:
  """Logits of latent codes z: `z @ A + b` for `head_params = (A, b)` when `head_fn` is
  None, else `head_fn(head_params, z)`."""
  if head_fn is None:
    a, b = head_params
    return z @ a + b
  return head_fn(head_params, z)


def check_codec(params, encode, decode, x, name: str = "x") -> jax.ShapeDtypeStruct:
  """Checks (abstractly, nothing runs) that `encode(params, x)` is a flat latent
  [batch, D] and that `decode` maps it back to the shape of x; returns the latent's shape.

  Raises:
    InvjaxError: naming the function whose output has the wrong shape.
  """
  z = jax.eval_shape(encode, params, x)
  if len(z.shape) != 2:
    raise checks.InvjaxError(f"encode must return a flat latent [batch, D], got {z.shape}")
  x_back = jax.eval_shape(decode, params, z)
  if x_back.shape != x.shape:
    raise checks.InvjaxError(
        f"decode must map the latent {z.shape} back to the shape of {name} {x.shape}, got "
        f"{x_back.shape}")
  return z
