"""Input validation shared by every public entry point of invjax.

Each check raises an error whose message names the argument and the problem
(wrong shape, wrong dtype, NaN pixels, a negative epsilon, ...). Value checks
(finiteness, ranges) only run on concrete arrays: inside `jax.jit` the values
are tracers and only the static shape/dtype checks apply. Public functions call
these checks *before* entering their jitted core, so a user calling them from
Python gets the clear error.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class InvjaxError(ValueError):
  """Bad input to an invjax function (a `ValueError`, so callers may catch either)."""


class ConvergenceError(RuntimeError):
  """An iterative solver (fixed-point inverse, SVM, ...) did not reach its tolerance."""


class ConvergenceWarning(RuntimeWarning):
  """A fixed-point iteration stopped with a residual above its tolerance."""


def is_concrete(x) -> bool:
  """True when `x` holds values (numpy / committed jax array), False for a tracer."""
  return not isinstance(x, jax.core.Tracer)


def check_rank(x, rank: int | Sequence[int], name: str) -> None:
  ranks = (rank,) if isinstance(rank, int) else tuple(rank)
  if np.ndim(x) not in ranks:
    raise InvjaxError(
        f"{name} must have rank {' or '.join(map(str, ranks))}, got shape {np.shape(x)}")


def check_shape(x, shape: Sequence[Optional[int]], name: str) -> None:
  """`shape` may hold None for free dimensions."""
  got = np.shape(x)
  if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
    want = tuple("*" if s is None else s for s in shape)
    raise InvjaxError(f"{name} must have shape {want}, got {got}")


def check_floating(x, name: str) -> None:
  if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise InvjaxError(f"{name} must be a floating-point array, got dtype {jnp.result_type(x)}")


def check_finite(x, name: str) -> None:
  if is_concrete(x):
    arr = np.asarray(x)
    if not np.all(np.isfinite(arr)):
      n_bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
      raise InvjaxError(f"{name} contains {n_bad} NaN or infinite value(s)")


def check_images(x, name: str = "x", *, value_range=(0.0, 1.0), rank=4) -> None:
  """Float images, NHWC (rank 4) by default, finite and (when given) inside `value_range`."""
  check_rank(x, rank, name)
  check_floating(x, name)
  check_finite(x, name)
  if value_range is not None and is_concrete(x):
    lo, hi = value_range
    arr = np.asarray(x)
    if arr.size and (arr.min() < lo - 1e-6 or arr.max() > hi + 1e-6):
      raise InvjaxError(
          f"{name} must lie in [{lo}, {hi}] (float pixels), got values in "
          f"[{arr.min():.4g}, {arr.max():.4g}]; convert uint8 images with invjax.data.to_float")


def check_labels(y, batch: int, name: str = "y", num_classes: Optional[int] = None) -> None:
  """Integer labels of shape [batch], optionally in [0, num_classes)."""
  if not jnp.issubdtype(jnp.result_type(y), jnp.integer):
    raise InvjaxError(f"{name} must be integer class labels, got dtype {jnp.result_type(y)}")
  check_shape(y, (batch,), name)
  if num_classes is not None and is_concrete(y):
    arr = np.asarray(y)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
      raise InvjaxError(
          f"{name} must lie in [0, {num_classes}), got values in [{arr.min()}, {arr.max()}]")


def check_positive(value, name: str, *, strict: bool = True) -> None:
  """A scalar hyper-parameter (epsilon, step size, C, ...) that must be > 0 (or >= 0)."""
  if is_concrete(value):
    v = float(np.asarray(value))
    if not np.isfinite(v) or (v <= 0 if strict else v < 0):
      raise InvjaxError(f"{name} must be {'> 0' if strict else '>= 0'}, got {v}")


def check_in_open_interval(value, lo: float, hi: float, name: str) -> None:
  if is_concrete(value):
    v = float(np.asarray(value))
    if not (lo < v < hi):
      raise InvjaxError(f"{name} must lie in the open interval ({lo}, {hi}), got {v}")


def check_flow_input(module, x, name: str, *, rank: int | Sequence[int] | None = None) -> None:
  """Checks a flow layer's input: rank (when given) and float dtype always; finiteness only
  when `module` is the top-level module (a user's call), so nested layers of a model do not
  re-check (and re-transfer) the same array at every layer."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  if rank is not None:
    check_rank(x, rank, name)
  check_floating(x, name)
  if not isinstance(module.parent, nn.Module):
    check_finite(x, name)
