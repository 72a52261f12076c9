"""Lipschitz constants: measured lower bounds, composed upper bounds, certified radii.

* Lower bounds (any function): the local Lipschitz constant of f at x in l2 is the
  largest singular value of its Jacobian J(x). `local_lipschitz` runs power
  iteration on J^T J with Jacobian-vector / vector-Jacobian products (the dense
  Jacobian is never formed); each iterate gives `||J v|| <= sigma_max(J)` for a
  unit v, a valid LOWER bound of the local and of the global constant.
  `global_lipschitz_lower` maximises it over a set of points.
* Upper bounds (compositions): Lip(f o g) <= Lip(f) Lip(g). For an i-ResNet block
  `F(x) = x + g(x)` with Lip(g) <= c < 1: Lip(F) <= 1 + c and Lip(F^-1) <= 1 / (1 - c)
  (Behrmann et al. 2019). `compose_upper` multiplies per-block bounds.
* Certification: with margin `m = logit_y - max_{j != y} logit_j` and an l2
  Lipschitz constant L of the logit map (as a map R^n -> R^K in l2), every pair of
  logits can change by at most `sqrt(2) L ||delta||` relative to each other
  (|(e_y - e_j).(f(x+d) - f(x))| <= ||e_y - e_j|| L ||d||), so the prediction is
  constant inside the l2 ball of radius `m / (sqrt(2) L)` (Tsuzuku et al. 2018).
"""
from __future__ import annotations

import functools
from typing import Callable, Iterable, Optional, Sequence, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from invjax._src import checks
from invjax._src import compilation
from invjax._src import geometry
from invjax._src.geometry import TINY as _TINY

Array = jax.Array


def _per_example_norm(v: Array) -> Array:
  return jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), axis=1))


def _normalise(v: Array) -> Array:
  n = _per_example_norm(v)
  return v / jnp.maximum(n, _TINY).reshape((-1,) + (1,) * (v.ndim - 1))


@functools.partial(compilation.jit, static_argnames=("fn", "num_iters"))
def _power_iteration(fn, x, v0, num_iters):
  _, jvp_fn = jax.linearize(fn, x)
  vjp_fn = jax.linear_transpose(jvp_fn, x)

  def body(_, v):
    return _normalise(vjp_fn(jvp_fn(v))[0])

  v = jax.lax.fori_loop(0, num_iters, body, _normalise(v0))
  return _per_example_norm(jvp_fn(v)), v


def local_lipschitz(fn: Callable[[Array], Array], x: Array, *, key: Array,
                    num_iters: int = 20) -> Array:
  """Local l2 Lipschitz LOWER bound of `fn` at each example: ~sigma_max(J_fn(x_i)).

  `fn` must act on each example independently (batch-first, no cross-example
  mixing, e.g. no batch-norm in training mode), so that its batched Jacobian is
  block diagonal and the power iteration runs per example.

  Args:
    fn: `[batch, ...] -> [batch, ...]`; must be hashable (functions are).
    x: [batch, ...] points.
    key: PRNG key for the random start.
    num_iters: power iterations on J^T J (each costs one JVP and one VJP).

  Returns:
    float [batch]: `||J v||` for the final unit v; never above sigma_max(J(x_i)).
  """
  checks.check_rank(x, (2, 3, 4, 5), "x")
  checks.check_floating(x, "x")
  checks.check_finite(x, "x")
  if num_iters < 1:
    raise checks.InvjaxError(f"num_iters must be >= 1, got {num_iters}")
  x = jnp.asarray(x)
  v0 = jax.random.normal(key, x.shape, x.dtype)
  sigma, _ = _power_iteration(fn, x, v0, int(num_iters))
  chex.assert_shape(sigma, (x.shape[0],))
  return sigma


def global_lipschitz_lower(fn: Callable[[Array], Array], xs: Array, *, key: Array,
                           num_iters: int = 20, batch_size: int = 64) -> Tuple[float, int]:
  """Global l2 Lipschitz LOWER bound: the largest local bound over the points `xs`.

  Args:
    fn: as in `local_lipschitz`.
    xs: [N, ...] points (e.g. test images, or adversarial / interpolated points).
    key: PRNG key.
    num_iters: power iterations per point.
    batch_size: points per call.

  Returns:
    (bound, index of the maximising point).
  """
  checks.check_rank(xs, (2, 3, 4, 5), "xs")
  if batch_size <= 0:
    raise checks.InvjaxError(f"batch_size must be > 0, got {batch_size}")
  n = int(np.shape(xs)[0])
  if n == 0:
    raise checks.InvjaxError("xs must hold at least one point")
  vals = []
  for i, start in enumerate(range(0, n, batch_size)):
    vals.append(np.asarray(local_lipschitz(fn, xs[start:start + batch_size],
                                           key=jax.random.fold_in(key, i), num_iters=num_iters)))
  vals = np.concatenate(vals)
  j = int(np.argmax(vals))
  return float(vals[j]), j


def spectral_norm(w: Array, *, key: Optional[Array] = None, num_iters: int = 50) -> Array:
  """Largest singular value of a dense matrix [m, n] (exact SVD when `key` is None)."""
  checks.check_rank(w, 2, "w")
  checks.check_finite(w, "w")
  w = jnp.asarray(w)
  if key is None:
    return jnp.linalg.norm(w, ord=2)
  v = jax.random.normal(key, (w.shape[1],), w.dtype)
  for _ in range(num_iters):
    v = w.T @ (w @ v)
    v = v / jnp.maximum(jnp.linalg.norm(v), _TINY)
  return jnp.linalg.norm(w @ v)


def residual_block_bounds(c) -> Tuple[float, float]:
  """(Lip(F), Lip(F^-1)) upper bounds for `F(x) = x + g(x)` with Lip(g) <= c < 1: (1 + c, 1 / (1 - c))."""
  c = float(np.asarray(c))
  if not 0.0 <= c < 1.0:
    raise checks.InvjaxError(
        f"the residual branch's Lipschitz bound c must lie in [0, 1) for an invertible block, "
        f"got {c}")
  return 1.0 + c, 1.0 / (1.0 - c)


def compose_upper(bounds: Iterable) -> float:
  """Upper bound of a composition: the product of the layers' bounds (each >= 0)."""
  total = 1.0
  for i, b in enumerate(bounds):
    b = float(np.asarray(b))
    if not np.isfinite(b) or b < 0:
      raise checks.InvjaxError(f"bounds[{i}] must be a finite number >= 0, got {b}")
    total *= b
  return total


def iresnet_upper_bounds(coeffs: Sequence, *, outer: Sequence = ()) -> Tuple[float, float]:
  """(Lip(F), Lip(F^-1)) upper bounds for a stack of i-ResNet blocks.

  Args:
    coeffs: the per-block bounds c_i on Lip(g_i) (the spectral-normalisation
      coefficient, or better the measured product of the layers' spectral norms).
    outer: Lipschitz bounds of invertible maps around the stack that are isometries
      or bounded both ways, given as (forward, inverse) pairs (e.g. (1, 1) for
      squeeze / permutations).

  Returns:
    (prod (1 + c_i) * prod fwd, prod 1 / (1 - c_i) * prod inv).
  """
  per_block = [residual_block_bounds(c) for c in coeffs]
  fwd = compose_upper([b[0] for b in per_block] + [o[0] for o in outer])
  inv = compose_upper([b[1] for b in per_block] + [o[1] for o in outer])
  return fwd, inv


def logit_margin(logits: Array, y: Array) -> Array:
  """`logit_y - max_{j != y} logit_j` per example (negative when misclassified). [B, K] -> [B]."""
  checks.check_rank(logits, 2, "logits")
  checks.check_labels(y, np.shape(logits)[0], "y", np.shape(logits)[1])
  return geometry.logit_margin(jnp.asarray(logits), jnp.asarray(y))


def certified_radius(margin: Array, lipschitz_of_logits) -> Array:
  """Certified l2 radius `max(margin, 0) / (sqrt(2) * L)`.

  Args:
    margin: [batch] logit margins (`logit_margin`); a non-positive margin certifies 0.
    lipschitz_of_logits: an UPPER bound L on the l2 Lipschitz constant of x -> logits
      (scalar or [batch]); a lower bound (from `local_lipschitz`) gives no certificate.

  Returns:
    float [batch] radii: the prediction cannot change for ||delta||_2 < radius.
  """
  checks.check_finite(margin, "margin")
  checks.check_positive(jnp.min(jnp.asarray(lipschitz_of_logits)) if np.ndim(
      lipschitz_of_logits) else lipschitz_of_logits, "lipschitz_of_logits")
  margin = jnp.asarray(margin)
  return jnp.maximum(margin, 0.0) / (jnp.sqrt(2.0) * jnp.asarray(lipschitz_of_logits, margin.dtype))


def certified_accuracy(logits: Array, y: Array, lipschitz_of_logits, radius: float) -> float:
  """Fraction of examples correctly classified with a certified radius >= `radius`."""
  checks.check_positive(radius, "radius", strict=False)
  r = certified_radius(logit_margin(logits, y), lipschitz_of_logits)
  ok = (jnp.argmax(logits, -1) == jnp.asarray(y)) & (r >= radius)
  return float(jnp.mean(ok.astype(jnp.float32)))
