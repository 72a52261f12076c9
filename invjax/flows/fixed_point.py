"""Batched fixed-point iteration `x_{k+1} = f(x_k)` in a `lax.while_loop`, with its residual.

The i-ResNet inverse solves `x + g(x) = y` by iterating `x <- y - g(x)`, a contraction
when `Lip(g) < 1` (Banach). `fixed_point` is generic: any batch-first `f` that acts on
each example independently.

The reported residual of example `i` is `max |f(x)_i - x_i|` at the *returned* point `x`
(for the i-ResNet inverse this is `max |y - (x + g(x))|`, the reconstruction error in
output space). By Banach, the distance to the true fixed point is at most
`residual / (1 - Lip(f))`.

Iteration stops when every example's residual is `<= tol`, after `max_iter` updates, or
as soon as a residual is NaN/inf (then reported as such). Called eagerly (not under
`jit`), a warning is logged when `max_iter` is hit without reaching `tol`;
`check_converged` turns a failure into a `ConvergenceError` that states the residual.
Reverse-mode differentiation through the loop is not supported (forward mode is).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from invjax import checks

Array = jax.Array


class FixedPointInfo(NamedTuple):
  """Diagnostics of `fixed_point`.

  Attributes:
    residual: `[batch]`, `max |f(x) - x|` per example at the returned `x`.
    iterations: scalar int, number of updates `x <- f(x)` performed.
  """
  residual: Array
  iterations: Array


def _batch_max_abs(d: Array) -> Array:
  return jnp.max(jnp.abs(d.reshape(d.shape[0], -1)), axis=1)


def _all_done(res: Array, tol) -> Array:
  # NaN residuals count as "done" so the loop stops; they are reported, not hidden.
  return jnp.all((res <= tol) | ~jnp.isfinite(res))


def fixed_point(f: Callable[[Array], Array], x0: Array, *, tol: float = 1e-5,
                max_iter: int = 100) -> tuple[Array, FixedPointInfo]:
  """Iterates `x <- f(x)` from `x0` until `max |f(x) - x| <= tol` for every example.

  Args:
    f: batch-first map `[batch, ...] -> [batch, ...]` (same shape), a contraction for
      convergence; examples must not interact.
    x0: `[batch, ...]` starting point (for the i-ResNet inverse, `y`).
    tol: per-example tolerance on the max-abs residual `|f(x) - x|`.
    max_iter: maximum number of updates (a Python int or a traced integer).

  Returns:
    `(x, info)`: `x` has the shape of `x0`; `info` is a `FixedPointInfo` with the
    per-example residual `[batch]` at `x` and the number of updates.
  """
  checks.check_floating(x0, "x0")
  if np.ndim(x0) < 1:
    raise checks.InvjaxError(f"x0 must be batch-first (rank >= 1), got shape {np.shape(x0)}")
  checks.check_positive(tol, "tol", strict=False)
  if checks.is_concrete(max_iter) and int(max_iter) < 0:
    raise checks.InvjaxError(f"max_iter must be >= 0, got {max_iter}")

  fx0 = f(x0)
  if fx0.shape != x0.shape:
    raise checks.InvjaxError(
        f"f must map x0's shape {tuple(x0.shape)} to itself, got {tuple(fx0.shape)}")

  def cond(state):
    k, _, _, res = state
    return (k < max_iter) & ~_all_done(res, tol)

  def body(state):
    k, _, fx, _ = state
    x = fx
    fx = f(x)
    return k + 1, x, fx, _batch_max_abs(fx - x)

  init = (jnp.zeros((), jnp.int32), x0, fx0, _batch_max_abs(fx0 - x0))
  k, x, _, res = lax.while_loop(cond, body, init)
  info = FixedPointInfo(residual=res, iterations=k)
  if checks.is_concrete(res):
    worst = float(jnp.max(jnp.where(jnp.isfinite(res), res, jnp.inf)))
    if not worst <= tol:
      logging.warning(
          "fixed_point: stopped after %d iterations (max_iter=%d) with max residual %.3g > "
          "tol %.3g; the map may not be a contraction (stale spectral norm?) or needs more "
          "iterations", int(k), int(np.asarray(max_iter)), worst, tol)
  return x, info


def check_converged(info: FixedPointInfo, tol: float = 1e-5) -> FixedPointInfo:
  """Raises `invjax.checks.ConvergenceError` unless every residual is finite and `<= tol`.

  Call it on concrete values (outside `jit`); returns `info` unchanged when converged.
  """
  if not checks.is_concrete(info.residual):
    raise checks.InvjaxError(
        "check_converged needs concrete values: call it outside jax.jit on the returned info")
  res = np.asarray(info.residual)
  bad = ~(np.isfinite(res) & (res <= tol))
  if np.any(bad):
    worst = float(np.max(np.where(np.isfinite(res), res, np.inf)))
    raise checks.ConvergenceError(
        f"fixed-point iteration did not converge: max residual {worst:.3g} > tol {tol:.3g} "
        f"for {int(bad.sum())} of {res.size} example(s) after {int(np.asarray(info.iterations))} "
        "iteration(s); raise max_iter, check Lip(g) < 1 (refresh spectral norms with "
        "converge_spectral_norms) or lower the coefficient")
  return info
