"""FAB: the fast adaptive boundary attack (Croce & Hein 2020), L_inf and L2, in one compiled loop.

A minimal-norm attack: it looks for the adversarial example closest to the input instead
of the strongest one inside a budget. Each step linearises the classifier at the current
point `x_k` (the logit difference `g = f_t - f_y` and its gradient `w`), projects both `x_k`
and the original point `x_0` onto the linearised decision boundary `{z : g(x_k) + w.(z - x_k)
= 0}` intersected with the box [0, 1]^d (exactly, for the attack's norm), and moves to

  x_{k+1} = clip((1 - a) (x_k + eta d_k) + a (x_0 + eta d_0), 0, 1),
  a = min(||d_k|| / (||d_k|| + ||d_0||), alpha_max),

with `d_k`, `d_0` the two projection steps: a step towards the boundary biased towards the
original point, overshooting by `eta`. An adversarial `x_{k+1}` is recorded if it is the
closest so far and pulled back towards the input: `x_{k+1} <- (1 - beta) x_0 + beta x_{k+1}`.

FAB-T (`targeted=True`, AutoAttack's variant) linearises `f_t - f_y` for one target class `t`
per run, over the `num_target_classes` classes with the highest clean logits; the untargeted
variant picks, at every step, the class whose linearised boundary is closest (one gradient per
class). In both, `y` holds the true labels and success means misclassification.

Projection onto {z : w.z + c = 0} ∩ box, per example: in the frame where the step must raise
`u.delta` to `|r|` (r the residual at the point), the L_inf optimum is `delta_i = sign(u_i)
min(rho, room_i)` and the L2 optimum `delta_i = u_i min(lam, room_i / |u_i|)` (KKT: a clipped
multiple of `u`), `room_i` the distance to the box face in direction `sign(u_i)`. Both levels
solve `sum_i a_i min(level, cap_i) = |r|`, a piecewise-linear increasing function, solved to
float precision by bisection and a last linear solve (`_fill_level`). When the box keeps the
plane out of reach the step goes to the box corner that comes closest.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np

from invjax._src import checks
from invjax._src import compilation
from invjax._src import geometry
from invjax._src.geometry import NORMS, per_example as _per_example
from invjax._src import loops
from invjax.attacks import inputs
from invjax.attacks.result import AttackResult, from_adversarial

LogitsFn = inputs.LogitsFn

_MIN_STEP = 1e-8  # floor under the projection lengths in the alpha rule
_ZERO_WEIGHT = 1e-12  # gradient entries below this do not move their coordinate (L2)
# Geometric halvings of the level's bracket: (hi / lo)^(2^-30) is 1 to float32 precision for
# any bracket float32 can hold.
_BISECTIONS = 30


# ----------------------------------------------------------------------------- projection


def _fill_level(weights: jax.Array, caps: jax.Array, need: jax.Array) -> jax.Array:
  """Per row, the smallest level >= 0 with `sum_i weights_i min(level, caps_i) >= need`.

  `weights`, `caps` float [n, d] (>= 0), `need` float [n] (>= 0). The sum F is increasing,
  concave and piecewise linear with breakpoints at the caps, and `need / sum(weights)` (the
  level without caps) bounds the answer from below, the largest cap from above. A geometric
  bisection narrows that bracket to float precision (no sort: cheap on every backend); F is
  then linear on it but for the caps inside, and solving that line gives the level. A row
  whose need exceeds F at the largest cap (the plane is out of the box's reach) gets the
  largest cap.
  """
  def total(level):
    return jnp.sum(weights * jnp.minimum(level[:, None], caps), axis=1)

  top = jnp.max(caps, axis=1)
  lo = jnp.minimum(need / jnp.maximum(jnp.sum(weights, axis=1), geometry.TINY), top)

  def halve(_, bracket):
    lo, hi = bracket
    mid = jnp.sqrt(lo) * jnp.sqrt(hi)  # no underflow of lo * hi
    up = total(mid) >= need
    return jnp.where(up, lo, mid), jnp.where(up, mid, hi)

  lo, hi = jax.lax.fori_loop(0, _BISECTIONS, halve, (lo, top))
  over = caps > lo[:, None]
  below = jnp.sum(jnp.where(over, 0.0, weights * caps), axis=1)
  slope = jnp.sum(jnp.where(over, weights, 0.0), axis=1)
  level = jnp.clip((need - below) / jnp.maximum(slope, geometry.TINY), lo, hi)
  return jnp.where(total(top) < need, top, level)


def project_to_plane(p: jax.Array, w: jax.Array, r: jax.Array, norm: str) -> jax.Array:
  """The minimal-norm step onto a hyperplane within the box [0, 1]^d.

  Args:
    p: float [n, d] points in [0, 1].
    w: float [n, d] normals.
    r: float [n] residuals `w.p + c` of the planes `{z : w.z + c = 0}` at `p`.
    norm: "linf" or "l2".

  Returns:
    float [n, d] `delta` of least `norm` with `w.(p + delta) + c = 0` and `p + delta` in
    [0, 1]^d; where no such point exists, the step to the box corner that gets closest.
  """
  u = jnp.where(r[:, None] > 0, -w, w)  # now u.delta must reach |r| >= 0
  room = jnp.clip(jnp.where(u > 0, 1.0 - p, p), 0.0, None)
  mag = jnp.abs(u)
  if norm == "linf":
    rho = _fill_level(mag, room, jnp.abs(r))
    return jnp.sign(u) * jnp.minimum(rho[:, None], room)
  moves = mag > _ZERO_WEIGHT
  caps = jnp.where(moves, room / jnp.where(moves, mag, 1.0), 0.0)
  lam = _fill_level(jnp.where(moves, jnp.square(u), 0.0), caps, jnp.abs(r))
  return jnp.where(moves, u * jnp.minimum(lam[:, None], caps), 0.0)


# ----------------------------------------------------------------------------- linearisation


def _take(a: jax.Array, idx: jax.Array) -> jax.Array:
  """a[b, idx[b]] for a of shape [batch, K, ...]."""
  return jnp.take_along_axis(a, idx.reshape((-1, 1) + (1,) * (a.ndim - 2)), axis=1)[:, 0]


def _linearise_target(logits_fn: LogitsFn, x, y, t):
  """(g, w, logits): g = f_t - f_y at x [batch] and its input gradient; one backward pass."""
  def total(xx):
    logits = logits_fn(xx)
    g = _take(logits, t) - _take(logits, y)
    return jnp.sum(g), (g, logits)
  (_, (g, logits)), w = jax.value_and_grad(total, has_aux=True)(x)
  return g, w, logits


def _linearise_closest(logits_fn: LogitsFn, x, y, norm: str):
  """(g, w, logits) for the class whose linearised boundary is closest to x (the dual norm of
  the gradient of f_j - f_y measures it); the Jacobian costs one backward pass per class."""
  logits, vjp = jax.vjp(logits_fn, x)
  num_classes = logits.shape[1]
  eye = jnp.eye(num_classes, dtype=logits.dtype)
  cotangents = jnp.broadcast_to(eye[:, None, :], (num_classes,) + logits.shape)
  jac = jnp.swapaxes(jax.vmap(vjp)(cotangents)[0], 0, 1)  # [batch, K, ...]
  g_all = logits - _take(logits, y)[:, None]
  w_all = jac - _take(jac, y)[:, None]
  flat = w_all.reshape(w_all.shape[:2] + (-1,))
  dual = jnp.sum(jnp.abs(flat), -1) if norm == "linf" else jnp.sqrt(jnp.sum(flat * flat, -1))
  score = jnp.abs(g_all) / (dual + geometry.TINY)
  score = jnp.where(jax.nn.one_hot(y, num_classes, dtype=bool), jnp.inf, score)
  j = jnp.argmin(score, axis=1)
  return _take(g_all, j), _take(w_all, j), logits


# ----------------------------------------------------------------------------- the attack


def fab(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: Optional[jax.Array] = None,
        epsilon=None, norm: str = "linf", num_steps: int = 100, num_restarts: int = 1,
        targeted: bool = True, num_target_classes: int = 9, alpha_max: float = 0.1,
        eta: float = 1.05, beta: float = 0.9, random_start: bool = True,
        early_stop: bool = True, unroll: Optional[bool] = None) -> AttackResult:
  """FAB (Croce & Hein 2020), minimal-norm, L_inf or L2; FAB-T by default (as in AutoAttack).

  Runs `num_target_classes * num_restarts` runs (FAB-T) or `num_restarts` (untargeted) of
  `num_steps` steps each, in one compiled program, and keeps per example the closest
  adversarial found over all of them. The first run of each target starts at `x`, later
  restarts at a random point of the sphere of radius half the smallest of the best distance
  so far and `epsilon` (at `x` while neither is known). Examples misclassified on the clean
  input are returned unchanged (distance 0, success).

  Without `epsilon`, success means "adversarial": `x_adv` is the closest adversarial found
  (the input where none was). With `epsilon`, success also requires distance <= epsilon:
  an adversarial further away is not returned (the input is, with success False), and the
  later runs skip an example that has one within epsilon (AutoAttack's protocol). With
  `early_stop` it also stops inside the run as soon as it has one, so its distance is then
  within the budget but not necessarily minimal.

  Args:
    logits_fn: model, `[batch, ...] -> [batch, classes]`.
    x: float [batch, ...] inputs in [0, 1].
    y: int [batch] true labels (also with `targeted`: the targets are chosen from the model).
    key: PRNG key of the random restarts; may be None when there are none.
    epsilon: None, or a scalar / [batch] budget (> 0) in the chosen norm.
    norm: "linf" or "l2" (static).
    num_steps: steps per run (static).
    num_restarts: runs per target class (static).
    targeted: FAB-T: one run per target class, the classes with the highest clean logits
      other than `y` (static).
    num_target_classes: target classes of FAB-T, at most `classes - 1` (fewer are used when
      the model has fewer other classes).
    alpha_max: largest weight of the original point's projection, in (0, 1].
    eta: overshoot of the projection steps, >= 1.
    beta: backward step towards the input after an adversarial step, in (0, 1).
    random_start: restarts after the first start from random points (needed for
      `num_restarts > 1`; the first run of each target always starts at `x`).
    early_stop: with `epsilon`, freeze an example as soon as it has an adversarial within
      epsilon (static); False: it finishes its run minimising the distance, as AutoAttack's
      FAB does. Success is the same either way; without `epsilon` nothing stops early.
    unroll: trace the steps as straight-line code instead of `lax.while_loop`s
      (`invjax._src.loops.resolve_unroll`; None picks by backend, loop length and model).

  Returns:
    AttackResult, success re-checked on the model (untargeted: argmax != y);
    `num_grad_evals` int32 [batch] counts backward passes (one per step for FAB-T, one
    per class and step untargeted), `num_forward_evals` the forward checks of each step.
  """
  inputs.validate(logits_fn, x, y, epsilon=epsilon, choices=(("norm", norm, NORMS),))
  for value, name in ((num_steps, "num_steps"), (num_restarts, "num_restarts"),
                      (num_target_classes, "num_target_classes")):
    inputs.check_positive_int(value, name)
  for value, name, ok, rule in ((alpha_max, "alpha_max", lambda v: 0 < v <= 1, "in (0, 1]"),
                                (eta, "eta", lambda v: v >= 1, ">= 1"),
                                (beta, "beta", lambda v: 0 < v < 1, "in (0, 1)")):
    if checks.is_concrete(value) and not ok(float(np.asarray(value))):
      raise checks.InvjaxError(f"{name} must be {rule}, got {value!r}")
  if num_restarts > 1 and not random_start:
    raise checks.InvjaxError(
        "num_restarts > 1 needs random_start=True (restarts would be identical)")
  if num_restarts > 1 and key is None:
    raise checks.InvjaxError("fab with num_restarts > 1 needs a PRNG key (key=None given)")
  if key is None:
    key = jax.random.PRNGKey(0)  # unused: no random restart
  x = jnp.asarray(x)
  num_classes = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(x.shape, x.dtype)).shape[1]
  num_targets = min(int(num_target_classes), num_classes - 1) if targeted else 1
  batch = x.shape[0]
  bounded = jnp.asarray(epsilon is not None)
  eps = jnp.broadcast_to(jnp.asarray(0.0 if epsilon is None else epsilon, jnp.float32),
                         (batch,))
  rates = jnp.asarray([alpha_max, eta, beta], jnp.float32)
  runs = num_targets * num_restarts
  return _fab(logits_fn, x, jnp.asarray(y), key, eps, bounded, rates, norm=norm,
              num_steps=num_steps, num_restarts=num_restarts, num_targets=num_targets,
              targeted=targeted, early_stop=early_stop,
              unroll=loops.resolve_unroll(unroll, num_steps * runs, logits_fn, x))


class _Best(NamedTuple):
  """Per example: the iterate, the closest adversarial so far and its distance (inf while
  none), and the backward / forward passes spent."""
  x: jax.Array
  best_x: jax.Array
  best: jax.Array
  grads: jax.Array
  forwards: jax.Array


class _Runs(NamedTuple):
  r: jax.Array
  state: _Best


def _sphere(key, x, radius, norm):
  """x plus a random point of the `norm` sphere of per-example `radius`, clipped to the box."""
  if norm == "linf":
    t = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
    t = t / jnp.maximum(_per_example(geometry.flat_norm(t, "linf"), x.ndim), geometry.TINY)
  else:
    t = geometry.unit_l2(jax.random.normal(key, x.shape, x.dtype))
  return jnp.clip(x + _per_example(radius, x.ndim) * t, 0.0, 1.0)


@functools.partial(compilation.jit, static_argnames=(
    "logits_fn", "norm", "num_steps", "num_restarts", "num_targets", "targeted", "early_stop",
    "unroll"))
def _fab(logits_fn, x, y, key, eps, bounded, rates, *, norm, num_steps, num_restarts,
         num_targets, targeted, early_stop, unroll):
  """The compiled FAB runs; `eps` float [batch], used where the bool scalar `bounded`."""
  batch = x.shape[0]
  chex.assert_shape([y, eps], (batch,))
  alpha_max, eta, beta = rates[0], rates[1], rates[2]
  x0 = x.reshape(batch, -1)
  logits0 = logits_fn(x)
  attackable = jnp.argmax(logits0, axis=1) == y
  others = jnp.where(jax.nn.one_hot(y, logits0.shape[1], dtype=bool), -jnp.inf, logits0)
  targets = jax.lax.top_k(others, num_targets)[1]  # [batch, num_targets]
  grads_per_step = 1 if targeted else logits0.shape[1]

  def within(best):
    return bounded & (best <= eps)

  def active(best):
    return attackable & ~within(best)

  def step(target, live, s: _Best) -> _Best:
    on = active(s.best) & live if early_stop else live
    if targeted:
      g, w, _ = _linearise_target(logits_fn, s.x, y, target)
    else:
      g, w, _ = _linearise_closest(logits_fn, s.x, y, norm)
    xk, w = s.x.reshape(batch, -1), w.reshape(batch, -1)
    r0 = g + jnp.sum(w * (x0 - xk), axis=1)  # the linearised g at the original point
    d = project_to_plane(jnp.concatenate([xk, x0]), jnp.concatenate([w, w]),
                         jnp.concatenate([g, r0]), norm)
    d_k, d_0 = d[:batch], d[batch:]
    n_k = jnp.maximum(geometry.flat_norm(d_k, norm), _MIN_STEP)
    n_0 = jnp.maximum(geometry.flat_norm(d_0, norm), _MIN_STEP)
    a = jnp.minimum(n_k / (n_k + n_0), alpha_max)[:, None]
    x_new = jnp.clip((1 - a) * (xk + eta * d_k) + a * (x0 + eta * d_0), 0.0, 1.0)
    adv = jnp.argmax(logits_fn(x_new.reshape(x.shape)), axis=1) != y
    dist = geometry.flat_norm(x_new - x0, norm)
    better = on & adv & (dist < s.best)
    best_x = jnp.where(better[:, None], x_new, s.best_x.reshape(batch, -1))
    x_next = jnp.where(adv[:, None], (1 - beta) * x0 + beta * x_new, x_new)
    x_next = jnp.where(on[:, None], x_next, xk)
    spent = on.astype(jnp.int32)
    return _Best(x_next.reshape(x.shape), best_x.reshape(x.shape),
                 jnp.where(better, dist, s.best), s.grads + spent * grads_per_step,
                 s.forwards + spent)

  def run(r, s: _Best) -> _Best:
    target = jax.lax.dynamic_index_in_dim(targets, r // num_restarts, axis=1, keepdims=False)
    restart = r % num_restarts
    radius = 0.5 * jnp.where(bounded, jnp.minimum(s.best, eps), s.best)
    radius = jnp.where(jnp.isfinite(radius), radius, 0.0)
    start = jnp.where(restart > 0, _sphere(jax.random.fold_in(key, r), x, radius, norm), x)
    live = active(s.best)  # the examples this run attacks
    cond = (lambda s: jnp.any(active(s.best) & live)) if early_stop else (lambda s: jnp.any(live))
    return loops.bounded_while(cond, functools.partial(step, target, live), s._replace(x=start),
                               num_steps, unroll=unroll)

  best0 = jnp.where(attackable, jnp.inf, 0.0)
  zeros = jnp.zeros((batch,), jnp.int32)
  init = _Best(x, x, best0, zeros, zeros)
  out = loops.bounded_while(lambda s: jnp.any(active(s.state.best)),
                            lambda s: _Runs(s.r + 1, run(s.r, s.state)),
                            _Runs(jnp.asarray(0), init), num_targets * num_restarts,
                            unroll=unroll).state
  keep = jnp.where(bounded, out.best <= eps, jnp.isfinite(out.best))
  x_adv = jnp.where(_per_example(keep, x.ndim) > 0, out.best_x, x)
  return from_adversarial(logits_fn, x, x_adv, y, num_grad_evals=out.grads,
                          num_forward_evals=out.forwards)
