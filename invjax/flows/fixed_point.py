"""Batched fixed-point iteration `x_{k+1} = f(x_k)` in a `lax.while_loop`, with its residual.

The i-ResNet inverse solves `x + g(x) = y` by iterating `x <- y - g(x)`, a contraction
when `Lip(g) < 1` (Banach). `fixed_point` is generic: any batch-first `f` that acts on
each example independently.

The reported residual of example `i` is `max |f(x)_i - x_i|` at the *returned* point `x`
(for the i-ResNet inverse this is `max |y - (x + g(x))|`, the reconstruction error in
output space). By Banach, the distance to the true fixed point is at most
`residual / (1 - Lip(f))`.

Iteration stops when every example's residual is `<= tol`, after `max_iter` updates, or
as soon as a residual is NaN/inf (then reported as such). When it stops above `tol`, a
`ConvergenceWarning` (a `RuntimeWarning`) names the residual, the tolerance and the iterations:
directly when called eagerly (which also logs it), and from inside compiled code through
`jax.debug.callback` under `jax.jit` (emitted when the program runs; `jax.effects_barrier()`
waits for it). `warn=False` turns it off and compiles no callback; Python's warning filters
(`warnings.simplefilter("ignore", ConvergenceWarning)`, or `"error"`) apply as usual.
`check_converged` turns a failure into a `ConvergenceError` that states the residual.

`fixed_point` itself is not reverse-differentiable (a `while_loop`). `fixed_point_implicit`
solves `x* = f(params, x*)` the same way and differentiates the solution in `params` by
the implicit function theorem, `dx* = (I - df/dx)^{-1} (df/dparams) dparams`, without
differentiating through the iterations: the linear system is a `lax.custom_linear_solve`
whose solves are again fixed-point iterations (`v <- b + (df/dx) v`, and the transposed
one with vector-Jacobian products), contractions whenever `f` is. Forward mode, reverse
mode and `linearize` + `linear_transpose` all work, at the cost of one extra fixed-point
iteration per derivative.

`fixed_point_unrolled` runs a fixed number of updates and is differentiated through every
one of them (the "unrolled" derivative of a truncated solver, which is what a naive
implementation gets; compare it with the implicit one when judging gradient masking).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional
import warnings

from absl import logging
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from invjax._src import checks
from invjax._src.checks import ConvergenceWarning

Array = jax.Array


class FixedPointInfo(NamedTuple):
  """Diagnostics of `fixed_point`.

  Attributes:
    residual: `[batch]`, `max |f(x) - x|` per example at the returned `x`.
    iterations: scalar int, number of updates `x <- f(x)` performed.
  """
  residual: Array
  iterations: Array


def _unconverged_message(worst: float, iterations: int, max_iter: int, tol: float) -> str:
  return (f"fixed_point: stopped after {iterations} iterations (max_iter={max_iter}) with max "
          f"residual {worst:.3g} > tol {tol:.3g}; the map may not be a contraction (stale "
          "spectral norm?) or needs more iterations")


def _warn_unconverged(worst, iterations, max_iter, tol) -> None:
  """Host side of the check: a `ConvergenceWarning` unless `worst <= tol` (NaN/inf warn)."""
  worst, tol = float(worst), float(tol)
  if not worst <= tol:
    warnings.warn(_unconverged_message(worst, int(iterations), int(max_iter), tol),
                  ConvergenceWarning, stacklevel=2)


def _batch_max_abs(d: Array) -> Array:
  return jnp.max(jnp.abs(d.reshape(d.shape[0], -1)), axis=1)


def _all_done(res: Array, tol) -> Array:
  # NaN residuals count as "done" so the loop stops; they are reported, not hidden.
  return jnp.all((res <= tol) | ~jnp.isfinite(res))


def fixed_point(f: Callable[[Array], Array], x0: Array, *, tol: float = 1e-5,
                max_iter: int = 100, warn: bool = True) -> tuple[Array, FixedPointInfo]:
  """Iterates `x <- f(x)` from `x0` until `max |f(x) - x| <= tol` for every example.

  Args:
    f: batch-first map `[batch, ...] -> [batch, ...]` (same shape), a contraction for
      convergence; examples must not interact.
    x0: `[batch, ...]` starting point (for the i-ResNet inverse, `y`).
    tol: per-example tolerance on the max-abs residual `|f(x) - x|`.
    max_iter: maximum number of updates (a Python int or a traced integer).
    warn: issue a `ConvergenceWarning` when the iteration stops above `tol`, eagerly or (through
      `jax.debug.callback`) under `jit`; False: no warning and no callback.

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
  worst = jnp.max(jnp.where(jnp.isfinite(res), res, jnp.inf), initial=0.0)
  if checks.is_concrete(res):
    if not float(worst) <= tol:
      logging.warning("%s", _unconverged_message(float(worst), int(k), int(np.asarray(max_iter)),
                                                 float(tol)))
    if warn:
      _warn_unconverged(worst, k, np.asarray(max_iter), tol)
  elif warn:
    jax.debug.callback(_warn_unconverged, worst, k, max_iter, tol)
  return x, info


def _linear_fixed_point(apply_j: Callable[[Array], Array], b: Array, tol: float,
                        max_iter: int) -> Array:
  """Solves `v = b + J v` by `v <- b + J v` from `v = b` (J a contraction, `apply_j(v) = J v`).

  Stops when every example's change is `<= tol * max(1, max |b|)` or after `max_iter` updates.
  """
  scale = jnp.maximum(1.0, _batch_max_abs(b))

  def cond(state):
    k, _, res = state
    return (k < max_iter) & ~_all_done(res / scale, tol)

  def body(state):
    k, v, _ = state
    v_new = b + apply_j(v)
    return k + 1, v_new, _batch_max_abs(v_new - v)

  v1 = b + apply_j(b)
  _, v, _ = lax.while_loop(cond, body, (jnp.ones((), jnp.int32), v1, _batch_max_abs(v1 - b)))
  return v


def fixed_point_implicit(f: Callable[[Any, Array], Array], params: Any, x0: Array, *,
                         tol: float = 1e-5, max_iter: int = 100,
                         grad_tol: float = 1e-6, grad_max_iter: Optional[int] = None,
                         warn: bool = True) -> tuple[Array, FixedPointInfo]:
  """`fixed_point` of `x <- f(params, x)`, differentiable in `params` (implicit function theorem).

  The forward solve is exactly `fixed_point(lambda x: f(params, x), x0)` (so `info` is
  the same); `x0` only starts the iteration and gets no derivative. Derivatives of the
  returned `x*` with respect to `params` (any pytree of arrays: weights, the right-hand
  side `y` of an i-ResNet inverse, ...) are those of the exact fixed point,
  `(I - df/dx)^{-1} df/dparams`, each computed by a linear fixed-point iteration of
  Jacobian-vector (forward mode) or vector-Jacobian (reverse mode) products of `f` at `x*`.

  Args:
    f: `f(params, x) -> x`, batch-first, examples independent, a contraction in `x`.
    params: pytree of the differentiable inputs of `f`.
    x0: `[batch, ...]` starting point.
    tol, max_iter, warn: of the forward iteration (as in `fixed_point`).
    grad_tol: relative tolerance of the derivative iterations (per example, on the change
      of the iterate, relative to `max(1, max |right-hand side|)`).
    grad_max_iter: cap of the derivative iterations (default: `max_iter`; a Python int).

  Returns:
    `(x, info)` as `fixed_point`.
  """
  checks.check_positive(grad_tol, "grad_tol", strict=False)
  grad_iters = int(max_iter if grad_max_iter is None else grad_max_iter)
  frozen = lax.stop_gradient(params)
  x_star, info = fixed_point(lambda x: f(frozen, x), lax.stop_gradient(x0), tol=tol,
                             max_iter=max_iter, warn=warn)
  x_star = lax.stop_gradient(x_star)

  def apply_j(v):  # (df/dx) v at x*
    return jax.jvp(lambda x: f(frozen, x), (x_star,), (v,))[1]

  def apply_jt(w):  # (df/dx)^T w at x*
    return jax.vjp(lambda x: f(frozen, x), x_star)[1](w)[0]

  # (I - J) dx = (df/dparams) dparams. `rhs` is zero in value (so the solve below returns
  # exactly 0 and x* is unchanged) and carries df/dparams as its derivative.
  fx = f(params, x_star)
  rhs = fx - lax.stop_gradient(fx)
  correction = lax.custom_linear_solve(
      lambda v: v - apply_j(v), rhs,
      solve=lambda _, b: _linear_fixed_point(apply_j, b, grad_tol, grad_iters),
      transpose_solve=lambda _, b: _linear_fixed_point(apply_jt, b, grad_tol, grad_iters))
  return x_star + correction, info


def fixed_point_unrolled(f: Callable[[Array], Array], x0: Array, *,
                         num_iter: int) -> tuple[Array, FixedPointInfo]:
  """Exactly `num_iter` updates `x <- f(x)` from `x0`, differentiable through the iterations.

  Unlike `fixed_point`, nothing stops early and no tolerance applies: the result is the
  `num_iter`-th iterate, and its derivatives (forward and reverse mode, in `x0` and in
  whatever `f` closes over) are those of the composition `f o ... o f` (a `lax.scan`),
  not those of the fixed point.

  Args:
    f: batch-first map `[batch, ...] -> [batch, ...]` (same shape).
    x0: `[batch, ...]` starting point.
    num_iter: number of updates, a Python int >= 0.

  Returns:
    `(x, info)`; `info.residual` is `max |f(x) - x|` per example at the returned `x` (one
    more evaluation of `f`) and `info.iterations == num_iter`.
  """
  checks.check_floating(x0, "x0")
  if np.ndim(x0) < 1:
    raise checks.InvjaxError(f"x0 must be batch-first (rank >= 1), got shape {np.shape(x0)}")
  if not isinstance(num_iter, (int, np.integer)) or isinstance(num_iter, bool) or num_iter < 0:
    raise checks.InvjaxError(f"num_iter must be a Python int >= 0, got {num_iter!r}")
  out = jax.eval_shape(f, x0)
  if out.shape != x0.shape:
    raise checks.InvjaxError(
        f"f must map x0's shape {tuple(x0.shape)} to itself, got {tuple(out.shape)}")
  x, _ = lax.scan(lambda x, _: (f(x), None), x0, None, length=int(num_iter))
  residual = _batch_max_abs(f(x) - x)
  return x, FixedPointInfo(residual=residual, iterations=jnp.asarray(int(num_iter), jnp.int32))


def check_converged(info: FixedPointInfo, tol: float = 1e-5) -> FixedPointInfo:
  """Raises `invjax._src.checks.ConvergenceError` unless every residual is finite and `<= tol`.

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
