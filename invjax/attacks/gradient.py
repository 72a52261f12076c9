"""Gradient attacks in pixel space: FGSM / FGM and PGD (L_inf, L2); `ATTACKS` names them
with Carlini-Wagner L2 (`invjax.attacks.cw`).

Every attack follows the invjax contract

  result = attack(logits_fn, x, y, *, key, **budget)   # -> AttackResult

where `logits_fn(x) -> logits [batch, classes]` is any JAX function of a batch
of float inputs in [0, 1] (NHWC images or `[batch, d]` vectors) and `y` holds int
labels `[batch]` (the *targets* when `targeted=True`). The optimisation runs in
one compiled program (no Python loop per step: a `lax.while_loop` on accelerators,
straight-line steps on CPU, see `invjax._src.loops`); the whole attack is
jit-able: wrap it in `jax.jit` with `logits_fn` closed over and the
structural budget (`num_steps`, `norm`, `targeted`, ...) static. `epsilon` and
`step_size` may be traced and may be given per example (`[batch]`).

Guarantees: `x_adv` lies in [0, 1] and inside the epsilon ball (projection after
every step); `result.success` is re-checked on the model (argmax of
`logits_fn(x_adv)`), so an example the attack could not break is reported as a
failure, never silently returned as a success.

Validation happens eagerly, before the loop (`invjax.attacks.inputs`): bad budgets,
labels, inputs or a model that returns NaN on the clean input raise `invjax.InvjaxError`
with a message that names the problem. Inside `jax.jit` only the static (shape/dtype)
checks apply.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from invjax._src import checks
from invjax._src import compilation
from invjax._src import geometry
from invjax._src.geometry import NORMS, per_example as _per_example, project
from invjax._src import loops
from invjax.attacks import cw
from invjax.attacks import inputs
from invjax.attacks.result import AttackResult, from_adversarial, is_adversarial

LogitsFn = inputs.LogitsFn

LOSSES = ("ce", "margin")


# ----------------------------------------------------------------------------- losses & geometry


def _choices(norm: str, loss: str):
  return (("norm", norm, NORMS), ("loss", loss, LOSSES))


def _attack_loss(logits: jax.Array, y: jax.Array, loss: str, targeted: bool) -> jax.Array:
  """Per-example loss the attacker *maximises*, float [batch]."""
  if loss == "ce":
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return -ce if targeted else ce
  m = geometry.logit_margin(logits, y)
  return m if targeted else -m


def _loss_and_grad(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, loss: str, targeted: bool):
  """(per-example loss [batch], logits, d loss / d x) with one forward-backward pass."""
  def total(xx):
    logits = logits_fn(xx)
    per_ex = _attack_loss(logits, y, loss, targeted)
    return jnp.sum(per_ex), (per_ex, logits)
  (_, (per_ex, logits)), grad = jax.value_and_grad(total, has_aux=True)(x)
  return per_ex, logits, grad


def _ascent_direction(grad: jax.Array, norm: str) -> jax.Array:
  """Steepest-ascent unit direction for the norm: sign(g) (L_inf) or g / ||g||_2 (L2)."""
  if norm == "linf":
    return jnp.sign(grad)
  return geometry.unit_l2(grad)


def _random_start(key: jax.Array, x: jax.Array, epsilon, norm: str) -> jax.Array:
  """A uniform sample of the epsilon ball around x (then clipped to [0, 1])."""
  eps = _per_example(epsilon, x.ndim)
  if norm == "linf":
    delta = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * eps
  else:
    k_dir, k_rad = jax.random.split(key)
    direction = jax.random.normal(k_dir, x.shape, x.dtype)
    direction = geometry.unit_l2(direction)
    dim = math.prod(x.shape[1:])
    radius = jax.random.uniform(k_rad, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype) ** (1.0 / dim)
    delta = direction * radius * eps
  return project(x + delta, x, epsilon, norm)


# ----------------------------------------------------------------------------- FGSM


def fgsm(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: Optional[jax.Array] = None,
         epsilon, norm: str = "linf", targeted: bool = False, loss: str = "ce") -> AttackResult:
  """Fast gradient sign method (Goodfellow et al. 2015); `norm="l2"` gives FGM.

  x_adv = clip(x + epsilon * d, 0, 1) with d = sign(grad) (L_inf) or grad / ||grad||_2 (L2)
  of the cross-entropy loss (descended instead when `targeted`).

  Args:
    logits_fn: model, `[batch, ...] -> [batch, classes]`.
    x: float [batch, ...] inputs in [0, 1].
    y: int [batch] true labels (targets when `targeted`).
    key: unused (deterministic attack); accepted for the common signature.
    epsilon: scalar or [batch] step length = budget, > 0.
    norm: "linf" or "l2".
    targeted: move towards class `y` instead of away from it.
    loss: "ce" (cross-entropy) or "margin" (Carlini-Wagner logit margin).

  Returns:
    AttackResult with `num_grad_evals == 1`.
  """
  del key
  inputs.validate(logits_fn, x, y, epsilon=epsilon, choices=_choices(norm, loss))
  return _fgsm(logits_fn, jnp.asarray(x), jnp.asarray(y), jnp.asarray(epsilon, jnp.float32),
               norm=norm, targeted=targeted, loss=loss)


@functools.partial(compilation.jit, static_argnames=("logits_fn", "norm", "targeted", "loss"))
def _fgsm(logits_fn, x, y, epsilon, *, norm, targeted, loss):
  chex.assert_shape(y, (x.shape[0],))
  _, _, grad = _loss_and_grad(logits_fn, x, y, loss, targeted)
  x_adv = x + _per_example(epsilon, x.ndim) * _ascent_direction(grad, norm)
  x_adv = project(x_adv, x, epsilon, norm)
  return from_adversarial(logits_fn, x, x_adv, y, targeted=targeted, num_grad_evals=1)


# ----------------------------------------------------------------------------- PGD


def pgd(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: Optional[jax.Array], epsilon,
        step_size=None, num_steps: int = 40, norm: str = "linf", random_start: bool = True,
        early_stop: bool = True, targeted: bool = False, num_restarts: int = 1,
        loss: str = "ce", unroll: Optional[bool] = None) -> AttackResult:
  """Projected gradient descent (Madry et al. 2018), L_inf or L2, in one compiled loop.

  Each step: x <- Proj_{B(x0, eps) ∩ [0,1]^n}(x + step_size * d), with d the
  steepest-ascent direction of the attack loss for the norm (sign of the
  gradient for L_inf, normalised gradient for L2).

  Args:
    logits_fn: model, `[batch, ...] -> [batch, classes]`.
    x: float [batch, ...] inputs in [0, 1].
    y: int [batch] true labels (targets when `targeted`).
    key: PRNG key for the random start(s); may be None when `random_start=False`.
    epsilon: scalar or [batch] budget (> 0) in the chosen norm.
    step_size: scalar or [batch] step length; default `2.5 * epsilon / num_steps`.
    num_steps: steps per restart (static).
    norm: "linf" or "l2" (static).
    random_start: start from a uniform point of the ball instead of x (static).
    early_stop: freeze an example as soon as it is adversarial (static); the
      loop exits when every example is frozen. Without it every example runs all
      steps and the last iterate is returned (stronger, more transferable
      examples).
    targeted: reach class `y` instead of leaving it (static).
    num_restarts: independent random restarts (static); an example broken by one
      restart is kept, later restarts only work on the remaining ones.
    loss: "ce" or "margin" (static).
    unroll: trace the `num_steps * num_restarts` steps as straight-line code instead of a
      `lax.while_loop` (same result; no early exit of the whole batch). None: unroll on
      CPU up to 100 steps in all when `logits_fn` uses lax's convolution, whose input
      gradient XLA:CPU runs ~5x slower inside loops (`invjax._src.loops`; invjax networks use
      `invjax._src.conv` and keep the loop).

  Returns:
    AttackResult; `num_grad_evals` is int32 [batch]: the gradient evaluations
    spent on each example before it was frozen (or in total).
  """
  inputs.validate(logits_fn, x, y, epsilon=epsilon, step_size=step_size,
                  choices=_choices(norm, loss))
  inputs.check_positive_int(num_steps, "num_steps")
  inputs.check_positive_int(num_restarts, "num_restarts")
  if random_start and key is None:
    raise checks.InvjaxError("pgd with random_start=True needs a PRNG key (key=None given)")
  if num_restarts > 1 and not random_start:
    raise checks.InvjaxError(
        "num_restarts > 1 needs random_start=True (restarts would be identical)")
  if key is None:
    key = jax.random.PRNGKey(0)  # unused: no random start
  batch = np.shape(x)[0]
  eps = jnp.broadcast_to(jnp.asarray(epsilon, jnp.float32), (batch,))
  alpha = 2.5 * eps / num_steps if step_size is None else jnp.broadcast_to(
      jnp.asarray(step_size, jnp.float32), (batch,))
  return _pgd(logits_fn, jnp.asarray(x), jnp.asarray(y), key, eps, alpha, num_steps=num_steps,
              norm=norm, random_start=random_start, early_stop=early_stop, targeted=targeted,
              num_restarts=num_restarts, loss=loss,
              unroll=loops.resolve_unroll(unroll, num_steps * num_restarts, logits_fn, x))


class _Restart(NamedTuple):
  """PGD per example: the iterate, whether it is frozen (it neither moves nor counts), and
  the gradient evaluations spent. Between restarts, the examples broken so far are frozen
  at their adversarial iterate."""
  x: jax.Array
  frozen: jax.Array
  evals: jax.Array


class _Restarts(NamedTuple):
  r: jax.Array
  carry: _Restart


@functools.partial(compilation.jit, static_argnames=(
    "logits_fn", "num_steps", "norm", "random_start", "early_stop", "targeted", "num_restarts",
    "loss", "unroll"))
def _pgd(logits_fn, x, y, key, eps, alpha, *, num_steps, norm, random_start, early_stop,
         targeted, num_restarts, loss, unroll):
  """The compiled PGD loop; `eps` and `alpha` are float [batch]."""
  batch = x.shape[0]
  chex.assert_shape([y, eps, alpha], (batch,))
  alpha_b = _per_example(alpha, x.ndim)

  def one_restart(r, carry: _Restart) -> _Restart:
    start = _random_start(jax.random.fold_in(key, r), x, eps, norm) if random_start else x
    x_cur = jnp.where(_per_example(carry.frozen, x.ndim) > 0, carry.x, start)

    def body(s: _Restart) -> _Restart:
      _, logits, grad = _loss_and_grad(logits_fn, s.x, y, loss, targeted)
      frozen = s.frozen
      if early_stop:
        frozen = frozen | is_adversarial(logits, y, targeted=targeted)
      # Frozen examples neither move nor count the gradient evaluation.
      evals = s.evals + (~frozen).astype(jnp.int32)
      step = project(s.x + alpha_b * _ascent_direction(grad, norm), x, eps, norm)
      return _Restart(jnp.where(_per_example(frozen, x.ndim) > 0, s.x, step), frozen, evals)

    s = loops.bounded_while(lambda s: ~jnp.all(s.frozen), body,
                            _Restart(x_cur, carry.frozen, carry.evals), num_steps, unroll=unroll)
    won = carry.frozen | is_adversarial(logits_fn(s.x), y, targeted=targeted)
    return _Restart(s.x, won, s.evals)

  def restarts_body(s: _Restarts) -> _Restarts:
    return _Restarts(s.r + 1, one_restart(s.r, s.carry))

  init = _Restart(x, jnp.zeros((batch,), bool), jnp.zeros((batch,), jnp.int32))
  if num_restarts == 1:
    out = one_restart(0, init)
  else:
    # An example broken by an earlier restart starts the next one frozen (no work, no count).
    out = loops.bounded_while(lambda s: ~jnp.all(s.carry.frozen), restarts_body,
                              _Restarts(0, init), num_restarts, unroll=unroll).carry
  return from_adversarial(logits_fn, x, out.x, y, targeted=targeted, num_grad_evals=out.evals)


# The pixel-space attacks by name (Carlini-Wagner L2 lives in `invjax.attacks.cw`).
ATTACKS = {"fgsm": fgsm, "pgd": pgd, "cw": cw.carlini_wagner_l2}
