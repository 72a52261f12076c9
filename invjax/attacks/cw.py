"""Carlini & Wagner (2017) L2 attack, in one compiled program (any `logits_fn`).

Follows the contract of `invjax.attacks.gradient`
(`attack(logits_fn, x, y, *, key, **budget) -> AttackResult`, inputs validated by
`invjax.attacks.inputs`, success re-checked on the model). The outer loop searches the
constant c per example, the inner loop runs Adam in tanh space, so x' stays in [0, 1]
without clipping.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import optax

from invjax._src import checks
from invjax._src import compilation
from invjax._src import geometry
from invjax._src.geometry import per_example as _per_example
from invjax.attacks import inputs
from invjax.attacks.result import AttackResult, from_adversarial

LogitsFn = inputs.LogitsFn

# Upper end of the search bracket on c before the first success ("not bracketed yet").
_C_MAX = 1e10


def _to_tanh_space(x: jax.Array) -> jax.Array:
  return jnp.arctanh(jnp.clip(2.0 * x - 1.0, -1.0 + 1e-6, 1.0 - 1e-6))


def _from_tanh_space(w: jax.Array) -> jax.Array:
  return 0.5 * (jnp.tanh(w) + 1.0)


def carlini_wagner_l2(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *,
                      key: Optional[jax.Array] = None, confidence: float = 0.0,
                      initial_const: float = 1e-2, binary_search_steps: int = 9,
                      num_steps: int = 1000, learning_rate: float = 1e-2,
                      abort_early: bool = True, targeted: bool = False) -> AttackResult:
  """Carlini & Wagner (2017) L2 attack.

  For each example, minimises over w (x' = (tanh(w) + 1) / 2, so x' stays in
  [0, 1] without clipping)

    ||x' - x||_2^2 + c * max(Z_y(x') - max_{j != y} Z_j(x') + kappa, 0)      (untargeted)
    ||x' - x||_2^2 + c * max(max_{j != t} Z_j(x') - Z_t(x') + kappa, 0)      (targeted, t = y)

  with Adam, and binary-searches the constant c per example (x10 until a first
  success, then bisection). Keeps, per example, the closest x' that met the
  kappa-margin criterion over all steps and all values of c.

  Args:
    logits_fn: model, `[batch, ...] -> [batch, classes]` (logits, not probabilities).
    x: float [batch, ...] inputs in [0, 1].
    y: int [batch] true labels (targets when `targeted`).
    key: unused (deterministic attack); accepted for the common signature.
    confidence: kappa >= 0, the logit margin required of the adversarial example.
    initial_const: starting c (> 0).
    binary_search_steps: outer steps of the search on c (static).
    num_steps: Adam steps per value of c (static).
    learning_rate: Adam step size (> 0).
    abort_early: stop the inner loop when the batch objective has not
      decreased by 0.01% over the last `num_steps // 10` steps.
    targeted: reach class `y` instead of leaving it (static).

  Returns:
    AttackResult; failed examples carry the last iterate and `success=False`.
    `num_grad_evals` is the total number of Adam steps taken (int32 scalar).
  """
  del key
  inputs.validate(logits_fn, x, y)
  checks.check_positive(confidence, "confidence", strict=False)
  checks.check_positive(initial_const, "initial_const")
  checks.check_positive(learning_rate, "learning_rate")
  inputs.check_positive_int(binary_search_steps, "binary_search_steps")
  inputs.check_positive_int(num_steps, "num_steps")
  return _cw(logits_fn, jnp.asarray(x), jnp.asarray(y), jnp.asarray(confidence, jnp.float32),
             jnp.asarray(initial_const, jnp.float32), jnp.asarray(learning_rate, jnp.float32),
             binary_search_steps=binary_search_steps, num_steps=num_steps,
             abort_early=abort_early, targeted=targeted)


class _AdamState(NamedTuple):
  """The inner loop at one value of c."""
  i: Any  # steps taken
  w: jax.Array  # tanh-space iterate
  opt_state: Any
  best_x: jax.Array  # closest x' meeting the criterion (over every c so far)
  best_d: jax.Array  # its squared distance
  won: jax.Array  # bool [batch]: met the criterion at this c
  last_x: jax.Array  # the last iterate x'
  prev: jax.Array  # the objective at the last abort check
  cur: jax.Array  # the objective at the last step


class _SearchState(NamedTuple):
  """The outer search on c."""
  c: jax.Array
  lo: jax.Array
  hi: jax.Array
  best_x: jax.Array
  best_d: jax.Array
  ever: jax.Array  # bool [batch]: met the criterion at some c
  evals: jax.Array  # Adam steps taken, in all
  last_x: jax.Array


@functools.partial(compilation.jit, static_argnames=(
    "logits_fn", "binary_search_steps", "num_steps", "abort_early", "targeted"))
def _cw(logits_fn, x, y, confidence, initial_const, learning_rate, *, binary_search_steps,
        num_steps, abort_early, targeted):
  """The compiled Carlini-Wagner search (outer bisection on c, inner Adam loop)."""
  batch = x.shape[0]
  chex.assert_shape(y, (batch,))
  axes = tuple(range(1, x.ndim))
  w0 = _to_tanh_space(x)
  optimizer = optax.adam(learning_rate)
  check_every = max(1, num_steps // 10)
  kappa = confidence

  def met(logits):
    """The kappa-margin criterion, bool [batch]."""
    m = geometry.logit_margin(logits, y)
    return (m >= kappa) if targeted else (m <= -kappa)

  def objective(w, c):
    x_new = _from_tanh_space(w)
    dist = jnp.sum(jnp.square(x_new - x), axis=axes)
    logits = logits_fn(x_new)
    m = geometry.logit_margin(logits, y)
    f = jnp.maximum(kappa - m, 0.0) if targeted else jnp.maximum(m + kappa, 0.0)
    per_ex = dist + c * f
    return jnp.sum(per_ex), (x_new, dist, logits)

  grad_fn = jax.value_and_grad(objective, has_aux=True)

  def search_step(_, outer: _SearchState) -> _SearchState:
    c = outer.c

    def cond(s: _AdamState):
      stop = abort_early & (s.i > 0) & (s.i % check_every == 0) & (s.cur > s.prev * 0.9999)
      return (s.i < num_steps) & ~stop

    def body(s: _AdamState) -> _AdamState:
      (total, (x_new, dist, logits)), g = grad_fn(s.w, c)
      ok = met(logits)
      better = ok & (dist < s.best_d)
      best_x = jnp.where(_per_example(better, x.ndim) > 0, x_new, s.best_x)
      best_d = jnp.where(better, dist, s.best_d)
      updates, opt_state = optimizer.update(g, s.opt_state, s.w)
      w = optax.apply_updates(s.w, updates)
      prev = jnp.where(s.i % check_every == 0, s.cur, s.prev)
      return _AdamState(s.i + 1, w, opt_state, best_x, best_d, s.won | ok, x_new, prev, total)

    init = _AdamState(0, w0, optimizer.init(w0), outer.best_x, outer.best_d,
                      jnp.zeros((batch,), bool), x, jnp.asarray(jnp.inf, jnp.float32),
                      jnp.asarray(jnp.inf, jnp.float32))
    s = jax.lax.while_loop(cond, body, init)
    # Bisection on c: success -> shrink from above; failure -> grow (x10 until bracketed).
    hi = jnp.where(s.won, jnp.minimum(outer.hi, c), outer.hi)
    lo = jnp.where(s.won, outer.lo, jnp.maximum(outer.lo, c))
    c = jnp.where(hi < _C_MAX, 0.5 * (lo + hi), c * 10.0)
    return _SearchState(c, lo, hi, s.best_x, s.best_d, outer.ever | s.won, outer.evals + s.i,
                        s.last_x)

  init = _SearchState(
      jnp.full((batch,), initial_const, jnp.float32), jnp.zeros((batch,), jnp.float32),
      jnp.full((batch,), _C_MAX, jnp.float32), x, jnp.full((batch,), jnp.inf, jnp.float32),
      jnp.zeros((batch,), bool), jnp.asarray(0, jnp.int32), x)
  out = jax.lax.fori_loop(0, binary_search_steps, search_step, init)
  x_adv = jnp.where(_per_example(out.ever, x.ndim) > 0, out.best_x, out.last_x)
  return from_adversarial(logits_fn, x, x_adv, y, targeted=targeted, num_grad_evals=out.evals)
