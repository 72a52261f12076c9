"""Dual coordinate descent with shrinking for the linear SVM, one binary problem (LIBLINEAR
`-s 1` / `-s 3`, `solve_l2r_l1l2_svc`).

Pieces: `_coordinate` (one coordinate update), `_visiting_order` (an epoch's order, the active
coordinates first), `_epoch`; the loop states are `_Sweep` (inside an epoch) and `_DualState`
(between epochs). See `svm_solvers` for the problem and `dual_cd` for the stopping rule.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from invjax.passeurs.svm_solvers import BinaryResult
from invjax.passeurs.svm_solvers import dot as _dot


class _Dual(NamedTuple):
  """One binary dual problem: the data and the constants of its coordinate updates."""
  x: jax.Array        # [n, d] features
  y: jax.Array        # [n] labels in {-1, +1}
  qd: jax.Array       # [n] Q_ii + D_ii, the coordinate curvatures
  diag: jax.Array     # D_ii: 1/(2C) (squared hinge) or 0 (hinge)
  upper: jax.Array    # U: inf (squared hinge) or C (hinge)
  bscale: jax.Array   # 1 with the `-B 1` constant feature, else 0
  perms: jax.Array    # [m, n] int32 visiting orders
  shrinking: bool     # static


class _DualState(NamedTuple):
  """Dual CD between epochs."""
  w: jax.Array        # [d] sum_i alpha_i y_i x_i
  b: jax.Array        # [] bias (the constant feature's weight)
  alpha: jax.Array    # [n] dual variables
  active: jax.Array   # [n] bool, not shrunk
  pgmax_old: jax.Array  # previous epoch's extreme projected gradients (shrinking thresholds)
  pgmin_old: jax.Array
  res: jax.Array      # the last epoch's dual violation
  done: jax.Array     # bool, converged on all coordinates
  it: jax.Array       # int32 epochs
  visits: jax.Array   # int32 coordinates visited


class _Sweep(NamedTuple):
  """The loop carry of one epoch."""
  w: jax.Array        # [d]
  b: jax.Array        # []
  out: jax.Array      # [n, 2] per visit: the new alpha and 1 (kept active) or 0 (shrunk)
  pgmax: jax.Array    # this epoch's extreme projected gradients
  pgmin: jax.Array


def _coordinate(p: _Dual, i, s: _Sweep, order, coef, pgmax_old, pgmin_old) -> _Sweep:
  """Coordinate order[i]. Reads come from per-epoch arrays (coef[i] = y_j, Q_jj, alpha_j at the
  epoch start: each coordinate is visited at most once per epoch), results go to out[i], so
  no buffer is both read and written in the loop (XLA then updates in place, not copying)."""
  j = order[i]
  xj = jax.lax.dynamic_index_in_dim(p.x, j, keepdims=False)
  cj = jax.lax.dynamic_index_in_dim(coef, i, keepdims=False)
  yj, qj, aj = cj[0], cj[1], cj[2]
  g = yj * (jnp.dot(s.w, xj) + s.b) - 1 + p.diag * aj
  at_lo, at_hi = aj <= 0, aj >= p.upper
  shrink = ((at_lo & (g > pgmax_old)) | (at_hi & (g < pgmin_old))) & p.shrinking
  pg = jnp.where(at_lo, jnp.minimum(g, 0.0), jnp.where(at_hi, jnp.maximum(g, 0.0), g))
  pg = jnp.where(shrink, 0.0, pg)
  move = jnp.abs(pg) > 1e-12
  a_new = jnp.where(move, jnp.clip(aj - g / qj, 0.0, p.upper), aj)
  delta = (a_new - aj) * yj
  out = jax.lax.dynamic_update_index_in_dim(
      s.out, jnp.stack([a_new, jnp.where(shrink, 0.0, 1.0)]).astype(p.x.dtype), i, 0)
  return _Sweep(w=s.w + delta * xj, b=s.b + p.bscale * delta, out=out,
                pgmax=jnp.where(shrink, s.pgmax, jnp.maximum(s.pgmax, pg)),
                pgmin=jnp.where(shrink, s.pgmin, jnp.minimum(s.pgmin, pg)))


def _visiting_order(p: _Dual, s: _DualState):
  """(order [n], count): this epoch's permutation with the active coordinates first, in its
  order (a cumsum compaction); count of them (all n without shrinking)."""
  n = p.x.shape[0]
  perm = p.perms[s.it % p.perms.shape[0]]
  if not p.shrinking:
    return perm, jnp.asarray(n, jnp.int32)
  act = s.active[perm]
  pos = jnp.cumsum(act.astype(jnp.int32)) - 1
  order = jnp.zeros((n,), perm.dtype).at[jnp.where(act, pos, n)].set(perm, mode="drop")
  return order, pos[-1] + 1


def _epoch(p: _Dual, s: _DualState, tol) -> _DualState:
  """One epoch over the active coordinates; on meeting the rule with some shrunk, reactivates
  them all (the rule is then checked again on a full epoch)."""
  n = p.x.shape[0]
  dtype = p.x.dtype
  inf = jnp.asarray(jnp.inf, dtype)
  order, count = _visiting_order(p, s)
  coef = jnp.stack([p.y, p.qd, s.alpha], axis=1)[order]
  body = lambda i, sw: _coordinate(p, i, sw, order, coef, s.pgmax_old, s.pgmin_old)
  sweep = jax.lax.fori_loop(0, count, body,
                            _Sweep(s.w, s.b, jnp.zeros((n, 2), dtype), -inf, inf))
  visited = jnp.where(jnp.arange(n) < count, order, n)
  alpha = s.alpha.at[visited].set(sweep.out[:, 0], mode="drop")
  active = s.active.at[visited].set(sweep.out[:, 1] > 0, mode="drop")
  res = jnp.maximum(sweep.pgmax, 0.0) - jnp.minimum(sweep.pgmin, 0.0)
  met = res <= tol
  full = jnp.all(active)
  reset = met & ~full                      # converged on the active set: re-check all of them
  return _DualState(w=sweep.w, b=sweep.b, alpha=alpha, active=active | reset,
                    pgmax_old=jnp.where(reset | (sweep.pgmax <= 0), inf, sweep.pgmax),
                    pgmin_old=jnp.where(reset | (sweep.pgmin >= 0), -inf, sweep.pgmin),
                    res=res, done=met & full, it=s.it + 1, visits=s.visits + count)


def epoch_orders(key, n: int, count: int = 8):
  """[count, n] random permutations of range(n); dual CD epoch e visits in order e % count.

  (A fresh `jax.random.permutation` per epoch costs a sort of n keys, ~4 ms for n = 5,000 on
  CPU: more than a shrunk epoch. A pool of permutations keeps the order random across the
  coordinates; LIBLINEAR reshuffles every epoch.)"""
  return jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, count)).astype(
      jnp.int32)


def dual_cd(x, sq_norms, y, alpha0, *, c, squared, fit_bias, tol, max_iter, key,
            shrinking=True, perms=None) -> BinaryResult:
  """Dual coordinate descent, LIBLINEAR's `-s 1` / `-s 3` solver (`solve_l2r_l1l2_svc`), one class.

  Minimises the dual 0.5 a^T (Q + D) a - e^T a, 0 <= a_i <= U, with Q_ij = y_i y_j (x_i . x_j + B),
  D = 1/(2C), U = inf (squared hinge) or D = 0, U = C (hinge); w = sum_i a_i y_i x_i.

  Each epoch visits the active coordinates in a random order. With `shrinking` (LIBLINEAR's
  default), a coordinate at a bound whose gradient G is beyond the previous epoch's extreme
  projected gradients (a_i = 0 and G > PGmax_old, or a_i = U and G < PGmin_old) leaves the active
  set; when the active set meets the stopping rule, every coordinate is reactivated and the rule
  is checked again on a full epoch, so `converged` always refers to all coordinates. Static
  shapes: an epoch compacts the active coordinates, in the order of a random permutation, to the
  front of an index array (a cumsum and a scatter) and loops over their number (a traced trip
  count). Inside the loop no array is both read and written (the epoch-start alpha is read, the
  new values go to a separate buffer), so XLA updates in place; reading and writing alpha in the
  same step made XLA copy all n alphas per coordinate (2-3x slower at n = 5,000-20,000).
  Shrinking visits about 3x fewer coordinates at the same cost per visit
  (docs/results/svm.md).

  Stopping rule (LIBLINEAR's): stop when an epoch over all coordinates has PGmax - PGmin <= tol,
  |PGmax| <= tol and |PGmin| <= tol, i.e. `residual = max(PGmax, 0) - min(PGmin, 0) <= tol`.

  Args:
    x: [n, d] features (shared by all classes).
    sq_norms: [n] ||x_i||^2 (shared).
    y: [n] labels in {-1, +1}.
    alpha0: [n] initial feasible dual variables (zeros for a cold start).
    c: the SVM's C.
    squared: squared hinge (True) or hinge (False); a bool or a traced 0/1.
    fit_bias: the `-B 1` constant feature (bool or a traced 0/1).
    tol: LIBLINEAR's `-e` for the dual solvers (its default 0.1), see above.
    max_iter: maximum epochs (shrunk epochs included, like LIBLINEAR).
    key: PRNG key for the per-epoch permutations (used when `perms` is None).
    shrinking: LIBLINEAR's shrinking (static bool); False visits every coordinate every epoch.
    perms: [m, n] int32 visiting orders (`epoch_orders`), epoch e uses perms[e % m]; pass them to
      share one pool between classes.

  Returns:
    `BinaryResult` (w = sum_i alpha_i y_i x_i exactly up to rounding); `residual` is the stopping
    quantity of the last epoch (of its active set when `converged` is False).
  """
  dtype = x.dtype
  n = x.shape[0]
  c = jnp.asarray(c, dtype)
  bscale = jnp.asarray(fit_bias, dtype)
  squared = jnp.asarray(squared, bool)
  diag = jnp.where(squared, 0.5 / c, 0.0)
  upper = jnp.where(squared, jnp.inf, c)
  p = _Dual(x=x, y=y, qd=jnp.maximum(sq_norms + bscale + diag, jnp.finfo(dtype).tiny), diag=diag,
            upper=upper, bscale=bscale, perms=epoch_orders(key, n) if perms is None else perms,
            shrinking=shrinking)
  inf = jnp.asarray(jnp.inf, dtype)
  init = _DualState(w=_dot(alpha0 * y, x), b=bscale * jnp.sum(alpha0 * y), alpha=alpha0,
                    active=jnp.ones((n,), bool), pgmax_old=inf, pgmin_old=-inf, res=inf,
                    done=jnp.asarray(False), it=jnp.asarray(0, jnp.int32),
                    visits=jnp.asarray(0, jnp.int32))
  s = jax.lax.while_loop(lambda s: (s.it < max_iter) & ~s.done, lambda s: _epoch(p, s, tol), init)
  return BinaryResult(w=s.w, b=s.b, alpha=s.alpha, iterations=s.it, inner_iterations=s.visits,
                      residual=s.res, converged=s.done)
