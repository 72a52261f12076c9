"""Gradient attacks in pixel space: FGSM / FGM, PGD (L_inf, L2) and Carlini-Wagner L2.

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

Validation happens eagerly, before the loop: negative/NaN epsilon, labels of the
wrong shape or dtype, non-float or NaN or out-of-range inputs, and a
`logits_fn` that returns NaN (or the wrong shape) on the clean input all raise
`invjax._src.checks.InvjaxError` with a message that names the problem. Inside
`jax.jit` only the static (shape/dtype) checks apply.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Optional

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
from invjax.attacks.result import AttackResult, from_adversarial, is_adversarial

LogitsFn = Callable[[jax.Array], jax.Array]

LOSSES = ("ce", "margin")


# ----------------------------------------------------------------------------- validation


def _validate(logits_fn: LogitsFn, x, y, *, epsilon=None, step_size=None,
              norm: Optional[str] = None, loss: Optional[str] = None) -> None:
  """Checks the inputs of an attack; raises `InvjaxError` naming the problem."""
  if not callable(logits_fn):
    raise checks.InvjaxError(f"logits_fn must be callable, got {type(logits_fn).__name__}")
  if np.ndim(x) < 2:
    raise checks.InvjaxError(
        f"x must be batch-first with rank >= 2 ([batch, d] or NHWC), got shape {np.shape(x)}")
  checks.check_images(x, "x", rank=np.ndim(x))
  batch = np.shape(x)[0]
  checks.check_labels(y, batch, "y")
  if norm is not None and norm not in NORMS:
    raise checks.InvjaxError(f"norm must be one of {NORMS}, got {norm!r}")
  if loss is not None and loss not in LOSSES:
    raise checks.InvjaxError(f"loss must be one of {LOSSES}, got {loss!r}")
  for value, name in ((epsilon, "epsilon"), (step_size, "step_size")):
    if value is None:
      continue
    if np.ndim(value) not in (0, 1) or (np.ndim(value) == 1 and np.shape(value)[0] != batch):
      raise checks.InvjaxError(
          f"{name} must be a scalar or have shape ({batch},), got shape {np.shape(value)}")
    if checks.is_concrete(value):
      arr = np.asarray(value, np.float64)
      if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise checks.InvjaxError(f"{name} must be > 0, got {arr if arr.ndim else float(arr)}")
  _check_model(logits_fn, x, y)


def _check_model(logits_fn: LogitsFn, x, y) -> None:
  """Runs `logits_fn` once on the clean input (eagerly, when `x` is concrete)."""
  out = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)))
  if not isinstance(out, jax.ShapeDtypeStruct) or len(out.shape) != 2 or out.shape[0] != np.shape(x)[0]:
    got = getattr(out, "shape", type(out).__name__)
    raise checks.InvjaxError(
        f"logits_fn must map x of shape {np.shape(x)} to logits [batch, classes], got {got}")
  num_classes = out.shape[1]
  if num_classes < 2:
    raise checks.InvjaxError(f"logits_fn must return at least 2 classes, got {num_classes}")
  if checks.is_concrete(y):
    arr = np.asarray(y)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
      raise checks.InvjaxError(
          f"y must lie in [0, {num_classes}) (the number of logits), got values in "
          f"[{arr.min()}, {arr.max()}]")
  if checks.is_concrete(x):
    logits = np.asarray(compilation.jit(logits_fn)(jnp.asarray(x)))
    bad = ~np.all(np.isfinite(logits), axis=1)
    if bad.any():
      raise checks.InvjaxError(
          f"logits_fn returned NaN or infinite logits on the clean input for {int(bad.sum())} "
          f"example(s) (first: index {int(np.argmax(bad))}); fix the model before attacking it")


# ----------------------------------------------------------------------------- losses & geometry


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
  _validate(logits_fn, x, y, epsilon=epsilon, norm=norm, loss=loss)
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
  _validate(logits_fn, x, y, epsilon=epsilon, step_size=step_size, norm=norm, loss=loss)
  if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise checks.InvjaxError(f"num_steps must be a positive int, got {num_steps!r}")
  if not isinstance(num_restarts, (int, np.integer)) or num_restarts < 1:
    raise checks.InvjaxError(f"num_restarts must be a positive int, got {num_restarts!r}")
  if random_start and key is None:
    raise checks.InvjaxError("pgd with random_start=True needs a PRNG key (key=None given)")
  if num_restarts > 1 and not random_start:
    raise checks.InvjaxError("num_restarts > 1 needs random_start=True (restarts would be identical)")
  if key is None:
    key = jax.random.PRNGKey(0)  # unused: no random start
  batch = np.shape(x)[0]
  eps = jnp.broadcast_to(jnp.asarray(epsilon, jnp.float32), (batch,))
  alpha = 2.5 * eps / num_steps if step_size is None else jnp.broadcast_to(
      jnp.asarray(step_size, jnp.float32), (batch,))
  return _pgd(logits_fn, jnp.asarray(x), jnp.asarray(y), key, eps, alpha, num_steps=num_steps,
              norm=norm, random_start=random_start, early_stop=early_stop, targeted=targeted,
              num_restarts=num_restarts, loss=loss, unroll=loops.resolve_unroll(unroll, num_steps * num_restarts, logits_fn, x))


@functools.partial(compilation.jit, static_argnames=(
    "logits_fn", "num_steps", "norm", "random_start", "early_stop", "targeted", "num_restarts",
    "loss", "unroll"))
def _pgd(logits_fn, x, y, key, eps, alpha, *, num_steps, norm, random_start, early_stop,
         targeted, num_restarts, loss, unroll):
  """The compiled PGD loop; `eps` and `alpha` are float [batch]."""
  batch = x.shape[0]
  chex.assert_shape([y, eps, alpha], (batch,))
  alpha_b = _per_example(alpha, x.ndim)

  def one_restart(r, carry):
    x_best, won, evals = carry
    start = _random_start(jax.random.fold_in(key, r), x, eps, norm) if random_start else x
    x_cur = jnp.where(_per_example(won, x.ndim) > 0, x_best, start)

    def not_all_frozen(state):
      return ~jnp.all(state[1])

    def body(state):
      xc, frozen, ev = state
      _, logits, grad = _loss_and_grad(logits_fn, xc, y, loss, targeted)
      if early_stop:
        frozen = frozen | is_adversarial(logits, y, targeted=targeted)
      # Frozen examples neither move nor count the gradient evaluation.
      ev = ev + (~frozen).astype(jnp.int32)
      step = project(xc + alpha_b * _ascent_direction(grad, norm), x, eps, norm)
      xc = jnp.where(_per_example(frozen, x.ndim) > 0, xc, step)
      return xc, frozen, ev

    x_cur, _, evals = loops.bounded_while(not_all_frozen, body, (x_cur, won, evals), num_steps,
                                          unroll=unroll)
    won = won | is_adversarial(logits_fn(x_cur), y, targeted=targeted)
    return x_cur, won, evals

  def restarts_body(state):
    r, carry = state
    return r + 1, one_restart(r, carry)

  init = (x, jnp.zeros((batch,), bool), jnp.zeros((batch,), jnp.int32))
  if num_restarts == 1:
    x_adv, _, evals = one_restart(0, init)
  else:
    # An example broken by an earlier restart starts the next one frozen (no work, no count).
    _, (x_adv, _, evals) = loops.bounded_while(
        lambda state: ~jnp.all(state[1][1]), restarts_body, (0, init), num_restarts,
        unroll=unroll)
  return from_adversarial(logits_fn, x, x_adv, y, targeted=targeted, num_grad_evals=evals)


# ----------------------------------------------------------------------------- Carlini-Wagner L2


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
  _validate(logits_fn, x, y)
  checks.check_positive(confidence, "confidence", strict=False)
  checks.check_positive(initial_const, "initial_const")
  checks.check_positive(learning_rate, "learning_rate")
  for value, name in ((binary_search_steps, "binary_search_steps"), (num_steps, "num_steps")):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise checks.InvjaxError(f"{name} must be a positive int, got {value!r}")
  return _cw(logits_fn, jnp.asarray(x), jnp.asarray(y), jnp.asarray(confidence, jnp.float32),
             jnp.asarray(initial_const, jnp.float32), jnp.asarray(learning_rate, jnp.float32),
             binary_search_steps=binary_search_steps, num_steps=num_steps,
             abort_early=abort_early, targeted=targeted)


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

  def search_step(_, outer):
    c, lo, hi, best_x, best_d, ever, evals, _ = outer
    w = w0
    opt_state = optimizer.init(w)

    def cond(state):
      i, _, _, _, _, _, _, prev, cur = state
      stop = abort_early & (i > 0) & (i % check_every == 0) & (cur > prev * 0.9999)
      return (i < num_steps) & ~stop

    def body(state):
      i, w, opt_state, best_x, best_d, won, last_x, prev, cur = state
      (total, (x_new, dist, logits)), g = grad_fn(w, c)
      ok = met(logits)
      better = ok & (dist < best_d)
      best_x = jnp.where(_per_example(better, x.ndim) > 0, x_new, best_x)
      best_d = jnp.where(better, dist, best_d)
      won = won | ok
      updates, opt_state = optimizer.update(g, opt_state, w)
      w = optax.apply_updates(w, updates)
      prev = jnp.where(i % check_every == 0, cur, prev)
      return i + 1, w, opt_state, best_x, best_d, won, x_new, prev, total

    init = (0, w, opt_state, best_x, best_d, jnp.zeros((batch,), bool), x,
            jnp.asarray(jnp.inf, jnp.float32), jnp.asarray(jnp.inf, jnp.float32))
    steps, w, _, best_x, best_d, won, last_x, _, _ = jax.lax.while_loop(cond, body, init)
    # Bisection on c: success -> shrink from above; failure -> grow (x10 until bracketed).
    hi = jnp.where(won, jnp.minimum(hi, c), hi)
    lo = jnp.where(won, lo, jnp.maximum(lo, c))
    c = jnp.where(hi < 1e10, 0.5 * (lo + hi), c * 10.0)
    return c, lo, hi, best_x, best_d, ever | won, evals + steps, last_x

  init = (jnp.full((batch,), initial_const, jnp.float32), jnp.zeros((batch,), jnp.float32),
          jnp.full((batch,), 1e10, jnp.float32), x, jnp.full((batch,), jnp.inf, jnp.float32),
          jnp.zeros((batch,), bool), jnp.asarray(0, jnp.int32), x)
  _, _, _, best_x, _, ever, evals, last_x = jax.lax.fori_loop(
      0, binary_search_steps, search_step, init)
  x_adv = jnp.where(_per_example(ever, x.ndim) > 0, best_x, last_x)
  return from_adversarial(logits_fn, x, x_adv, y, targeted=targeted, num_grad_evals=evals)


ATTACKS = {"fgsm": fgsm, "pgd": pgd, "cw": carlini_wagner_l2}
