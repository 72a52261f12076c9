"""Auto-PGD (Croce & Hein 2020): APGD-CE / APGD-DLR and APGD-T, L_inf and L2, any `logits_fn`.

APGD is PGD without a step size to tune: it starts at `2 * epsilon` and halves it at
checkpoints when the loss stalls, restarting from the best point found. With `N` steps the
checkpoints are `w_j = ceil(p_j * N)` for p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06). At a checkpoint w_j an example's step
size is halved (and its iterate reset to its highest-loss point) when

  1. fewer than `rho * (w_j - w_{j-1})` of the steps since w_{j-1} increased its loss, or
  2. its step size was not halved at w_{j-1} and its best loss has not grown since.

Each step moves with momentum 0.75 (`alpha`):
  z = P(x_k + eta * d(grad)),  x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1}))
with d the steepest-ascent direction (sign for L_inf, normalised gradient for L2) and P
the projection onto the epsilon ball within [0, 1] (the first step has no momentum).

Losses (`invjax.attacks.apgd_losses`): cross-entropy, and the scale-invariant DLR loss
  DLR(z, y) = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3),
with z_pi1 >= z_pi2 >= ... the sorted logits, and its targeted form DLR_t.
`apgd_targeted` is AutoAttack's APGD-T: targeted DLR towards each of the top-k classes
(by clean logit) in turn, on the examples still robust; a misclassification is a success.

Both attacks follow the invjax contract (`invjax.attacks.gradient`): batch-first, one
compiled program (`invjax._src.loops` loops: runs, i.e. restarts x targets, around chunks
of the examples still robust, around the steps), jit-able, per-example early stop (an
example is frozen once adversarial: it neither moves nor counts gradient evaluations; a
chunk's loop ends when its examples are done, and later runs only visit the chunks of the
examples left), outputs in [0, 1] and inside the ball, `success` re-checked on the model.
The returned point is the adversarial one found, or the highest-loss point where none was.
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
from invjax._src import loops
from invjax._src.geometry import NORMS, per_example as _per_example, project
from invjax.attacks import inputs
from invjax.attacks.apgd_losses import LOSSES, attack_loss, dlr_loss, dlr_targeted_loss
from invjax.attacks.result import AttackResult, from_adversarial

__all__ = ("LOSSES", "apgd", "apgd_targeted", "checkpoints", "dlr_loss", "dlr_targeted_loss")

LogitsFn = inputs.LogitsFn

# Examples per chunk (`chunk_size=None`): on CPU the per-example cost of a step is flat from
# a few dozen examples up, so small chunks cost nothing and let the work follow the examples
# still robust; accelerators need larger batches to be busy.
DEFAULT_CHUNK = 32
DEFAULT_CHUNK_ACCELERATOR = 1024


# ----------------------------------------------------------------------------- schedule


def checkpoints(num_steps: int) -> list:
  """The step-size checkpoints `w_1 < w_2 < ... <= num_steps` of the paper (w_0 = 0 left out).

  Computed in hundredths (p_1 = 22/100) so that `ceil(p_j * N)` is exact.
  """
  prev, cur, out = 0, 22, []
  while True:
    w = -(-cur * num_steps // 100)
    if w > num_steps:
      break
    if w > 0 and (not out or w > out[-1]):
      out.append(w)
    prev, cur = cur, cur + max(cur - prev - 3, 6)
  return out


# ----------------------------------------------------------------------------- public API


def _validate(logits_fn, x, y, *, key, epsilon, norm, loss, num_steps, num_restarts, rho,
              momentum, min_classes):
  inputs.validate(logits_fn, x, y, epsilon=epsilon,
                  choices=(("norm", norm, NORMS), ("loss", loss, LOSSES)))
  inputs.check_positive_int(num_steps, "num_steps")
  inputs.check_positive_int(num_restarts, "num_restarts")
  checks.check_in_open_interval(rho, 0.0, 1.0, "rho")
  if checks.is_concrete(momentum) and not 0.0 < float(momentum) <= 1.0:
    raise checks.InvjaxError(f"momentum must lie in (0, 1], got {float(momentum)}")
  if key is None:
    raise checks.InvjaxError("apgd starts at a random point of the ball: it needs a PRNG key")
  num_classes = jax.eval_shape(
      logits_fn, jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x))).shape[1]
  if num_classes < min_classes:
    raise checks.InvjaxError(
        f"this loss needs at least {min_classes} classes, the model has {num_classes}")
  return num_classes


def apgd(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: jax.Array, epsilon,
         norm: str = "linf", loss: str = "ce", num_steps: int = 100, num_restarts: int = 1,
         targeted: bool = False, rho: float = 0.75, momentum: float = 0.75,
         early_stop: bool = True, target: Optional[jax.Array] = None,
         unroll: Optional[bool] = None, chunk_size: Optional[int] = None) -> AttackResult:
  """Auto-PGD (APGD-CE / APGD-DLR), L_inf or L2, in one compiled loop.

  Args:
    logits_fn: model, `[batch, ...] -> [batch, classes]`.
    x: float [batch, ...] inputs in [0, 1].
    y: int [batch] true labels (also when `targeted`).
    key: PRNG key for the random starts.
    epsilon: scalar or [batch] budget (> 0) in the chosen norm.
    norm: "linf" or "l2" (static).
    loss: "ce" (cross-entropy) or "dlr" (static); DLR needs >= 3 classes (>= 4 targeted).
    num_steps: steps per restart (static); `num_steps + 1` gradient evaluations.
    num_restarts: random restarts (static); later restarts only run on the examples
      still robust.
    targeted: reach class `target` (static): the loss is -CE(target) or targeted DLR, and
      success means `argmax == target`. (AutoAttack's APGD-T, where a targeted loss serves
      an untargeted success, is `apgd_targeted`.)
    rho: the checkpoint's fraction of loss increases below which the step size halves.
    momentum: weight `alpha` of the new gradient step against the previous move, (0, 1].
    early_stop: freeze an example once adversarial (static). Without it every example
      runs every step and the last adversarial iterate found is returned.
    target: int [batch] target classes (only with `targeted`), each != y.
    unroll: trace the steps as straight-line code (`invjax._src.loops.resolve_unroll`;
      None decides by backend, loop length and model).
    chunk_size: the most examples one run processes at a time (static). Each run (restart,
      target) gathers the examples still robust into chunks and runs only those, each chunk's
      step loop ending once its examples are done; the result does not depend on it. None:
      `DEFAULT_CHUNK` on CPU, `DEFAULT_CHUNK_ACCELERATOR` elsewhere.

  Returns:
    AttackResult (success re-checked on the model; for `targeted`, against `target`);
    `num_grad_evals` is int32 [batch], the gradient evaluations spent on each example.
  """
  num_classes = _validate(logits_fn, x, y, key=key, epsilon=epsilon, norm=norm, loss=loss,
                          num_steps=num_steps, num_restarts=num_restarts, rho=rho,
                          momentum=momentum,
                          min_classes=2 if loss == "ce" else (4 if targeted else 3))
  batch = np.shape(x)[0]
  if targeted:
    if target is None:
      raise checks.InvjaxError("apgd with targeted=True needs target= (int [batch])")
    checks.check_labels(target, batch, "target", num_classes)
    if checks.is_concrete(target) and checks.is_concrete(y) and np.any(
        np.asarray(target) == np.asarray(y)):
      raise checks.InvjaxError("target must differ from the true label y on every example")
    targets = jnp.asarray(target, jnp.int32)[:, None]
  else:
    if target is not None:
      raise checks.InvjaxError("target= is only used with targeted=True")
    targets = jnp.zeros((batch, 1), jnp.int32)
  return _run(logits_fn, x, y, targets, key, epsilon, rho, momentum, unroll, chunk_size,
              norm=norm, loss=loss, num_steps=num_steps, num_restarts=num_restarts,
              targeted=targeted, hit_target=targeted, early_stop=early_stop)


def apgd_targeted(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, *, key: jax.Array,
                  epsilon, norm: str = "linf", num_steps: int = 100,
                  num_target_classes: int = 9, num_restarts: int = 1, rho: float = 0.75,
                  momentum: float = 0.75, unroll: Optional[bool] = None,
                  chunk_size: Optional[int] = None) -> AttackResult:
  """APGD-T (AutoAttack): targeted-DLR APGD towards each of the top classes in turn.

  The targets of an example are the `num_target_classes` classes other than `y` with the
  highest clean logits, in that order; each target runs `num_restarts` APGD runs on the
  examples not yet misclassified. Success is a misclassification (the targeted runs serve
  an untargeted attack), with early stop.

  Args:
    logits_fn, x, y, key, epsilon, norm, num_steps, num_restarts, rho, momentum, unroll,
    chunk_size: as in `apgd` (`y` the true labels).
    num_target_classes: how many target classes (static), in [1, classes - 1]; the model
      needs >= 4 classes (targeted DLR).

  Returns:
    AttackResult (success = misclassified); `num_grad_evals` int32 [batch] over all runs.
  """
  num_classes = _validate(logits_fn, x, y, key=key, epsilon=epsilon, norm=norm, loss="dlr",
                          num_steps=num_steps, num_restarts=num_restarts, rho=rho,
                          momentum=momentum, min_classes=4)
  inputs.check_positive_int(num_target_classes, "num_target_classes")
  if num_target_classes > num_classes - 1:
    raise checks.InvjaxError(
        f"num_target_classes must be <= classes - 1 = {num_classes - 1}, "
        f"got {num_target_classes}")
  # The classes != y by decreasing clean logit.
  logits = logits_fn(jnp.asarray(x))
  logits = jnp.where(jax.nn.one_hot(y, logits.shape[-1], dtype=bool), -jnp.inf, logits)
  targets = jax.lax.top_k(logits, num_target_classes)[1].astype(jnp.int32)
  return _run(logits_fn, x, y, targets, key, epsilon, rho, momentum, unroll, chunk_size,
              norm=norm, loss="dlr", num_steps=num_steps, num_restarts=num_restarts,
              targeted=True, hit_target=False, early_stop=True)


def _run(logits_fn, x, y, targets, key, epsilon, rho, momentum, unroll, chunk_size, **static):
  batch = np.shape(x)[0]
  runs = targets.shape[1] * static["num_restarts"]
  unroll = loops.resolve_unroll(unroll, static["num_steps"] * runs, logits_fn, x)
  if chunk_size is None:
    chunk_size = DEFAULT_CHUNK if jax.default_backend() == "cpu" else DEFAULT_CHUNK_ACCELERATOR
  inputs.check_positive_int(chunk_size, "chunk_size")
  # Equal chunks of at most `chunk_size` (one chunk when unrolled: its loop bound is static).
  num_chunks = 1 if unroll else -(-batch // min(chunk_size, batch))
  eps = jnp.broadcast_to(jnp.asarray(epsilon, jnp.float32), (batch,))
  return _apgd(logits_fn, jnp.asarray(x), jnp.asarray(y, jnp.int32), targets, key, eps,
               jnp.asarray(rho, jnp.float32), jnp.asarray(momentum, jnp.float32),
               unroll=unroll, chunk=-(-batch // num_chunks), **static)


# ----------------------------------------------------------------------------- compiled core


class _Step(NamedTuple):
  """One APGD run on a chunk, per example unless noted: the iterate, the one before it, the
  gradient and loss there; the step size; the highest-loss point with its loss and gradient;
  the adversarial point found (if `found`); whether the example is frozen; the loss increases
  since the last checkpoint, the best loss and whether the step size was halved at the last
  checkpoint; gradient evaluations spent; `i` the step (scalar)."""
  i: jax.Array
  x: jax.Array
  x_prev: jax.Array
  grad: jax.Array
  loss: jax.Array
  eta: jax.Array
  x_best: jax.Array
  loss_best: jax.Array
  grad_best: jax.Array
  x_adv: jax.Array
  found: jax.Array
  frozen: jax.Array
  increases: jax.Array
  loss_best_check: jax.Array
  halved_check: jax.Array
  evals: jax.Array


class _Carry(NamedTuple):
  """Per example, across runs (restarts x targets): the point kept, its loss, whether it is
  adversarial, gradient evaluations spent."""
  x: jax.Array
  loss: jax.Array
  won: jax.Array
  evals: jax.Array


class _Loop(NamedTuple):
  """A loop counter (the run, or the chunk within a run) and the per-example carry."""
  k: jax.Array
  carry: _Carry


@functools.partial(compilation.jit, static_argnames=(
    "logits_fn", "norm", "loss", "num_steps", "num_restarts", "targeted", "hit_target",
    "early_stop", "unroll", "chunk"))
def _apgd(logits_fn, x0, y, targets, key, eps, rho, momentum, *, norm, loss, num_steps,
          num_restarts, targeted, hit_target, early_stop, unroll, chunk):
  """The compiled APGD loops: runs (targets x restarts) > chunks > steps.

  `targets` is int [batch, T] (one set of restarts per column). Each run gathers the
  examples still robust into the first chunks (of `chunk` examples) and only runs those, so
  the work follows the examples left; every example draws its random starts from its own
  key, so the result does not depend on the chunking.
  """
  batch, nd = x0.shape[0], x0.ndim
  chex.assert_shape([y, eps], (batch,))
  padded = -(-batch // chunk) * chunk
  pad = lambda a, v: jnp.concatenate([a, jnp.full((padded - batch,) + a.shape[1:], v, a.dtype)])
  x0, y, targets, eps = pad(x0, 0.5), pad(y, 0), pad(targets, 1), pad(eps, 1.0)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(padded))
  ckpts = checkpoints(num_steps)
  # Indexed by the step i (0-based): whether x_{i+1} is a checkpoint, and its interval length.
  is_ckpt = np.zeros(num_steps, bool)
  length = np.ones(num_steps, np.float32)
  for prev, w in zip([0] + ckpts[:-1], ckpts):
    is_ckpt[w - 1], length[w - 1] = True, w - prev
  is_ckpt, length = jnp.asarray(is_ckpt), jnp.asarray(length)
  b = lambda m: _per_example(m, nd) > 0  # bool [chunk] -> broadcastable mask

  def one_run(n, xc, yc, tc, ec, kc, carry: _Carry) -> _Carry:
    """Run `n` on one chunk: inputs, labels, targets, budgets, keys, carry (all [chunk])."""
    target = jnp.take(tc, n // num_restarts, axis=1)

    def evaluate(xx):
      def total(v):
        logits = logits_fn(v)
        per_ex = attack_loss(logits, yc, target, loss, targeted)
        return jnp.sum(per_ex), (per_ex, logits)
      (_, (per_ex, logits)), grad = jax.value_and_grad(total, has_aux=True)(xx)
      pred = jnp.argmax(logits, axis=-1)
      return per_ex, (pred == target) if hit_target else (pred != yc), grad

    start = _random_start(jax.vmap(lambda k: jax.random.fold_in(k, n))(kc), xc, ec, norm)
    x_start = jnp.where(b(carry.won), carry.x, start)
    loss0, hit0, grad0 = evaluate(x_start)
    frozen = carry.won
    found = hit0 & ~frozen
    s = _Step(
        i=jnp.zeros((), jnp.int32), x=x_start, x_prev=x_start, grad=grad0, loss=loss0,
        eta=2.0 * ec, x_best=x_start, loss_best=loss0, grad_best=grad0, x_adv=x_start,
        found=found, frozen=frozen | (found if early_stop else False),
        increases=jnp.zeros_like(ec), loss_best_check=loss0,
        halved_check=jnp.ones_like(frozen), evals=carry.evals + (~frozen).astype(jnp.int32))

    def body(s: _Step) -> _Step:
      active = ~s.frozen
      eta = _per_example(s.eta, nd)
      alpha = jnp.where(s.i == 0, 1.0, momentum)
      direction = jnp.sign(s.grad) if norm == "linf" else geometry.unit_l2(s.grad)
      z = project(s.x + eta * direction, xc, ec, norm)
      x_new = project(s.x + alpha * (z - s.x) + (1.0 - alpha) * (s.x - s.x_prev), xc, ec, norm)
      loss_new, hit, grad_new = evaluate(x_new)
      increases = s.increases + (loss_new > s.loss).astype(jnp.float32)
      better = loss_new > s.loss_best
      x_best = jnp.where(b(better), x_new, s.x_best)
      loss_best = jnp.where(better, loss_new, s.loss_best)
      grad_best = jnp.where(b(better), grad_new, s.grad_best)
      # Step-size check at the checkpoints: halve and restart from the best point.
      ckpt = is_ckpt[s.i]
      stalled = (increases < rho * length[s.i]) | (~s.halved_check
                                                    & (loss_best <= s.loss_best_check))
      halve = ckpt & stalled
      new = _Step(
          i=s.i,
          x=jnp.where(b(halve), x_best, x_new), x_prev=s.x,
          grad=jnp.where(b(halve), grad_best, grad_new),
          loss=jnp.where(halve, loss_best, loss_new),
          eta=jnp.where(halve, 0.5 * s.eta, s.eta),
          x_best=x_best, loss_best=loss_best, grad_best=grad_best,
          x_adv=jnp.where(b(hit), x_new, s.x_adv), found=s.found | hit,
          frozen=s.frozen | (hit if early_stop else False),
          increases=jnp.where(ckpt, 0.0, increases),
          loss_best_check=jnp.where(ckpt, loss_best, s.loss_best_check),
          halved_check=jnp.where(ckpt, halve, s.halved_check),
          evals=s.evals + 1)
      # Frozen examples keep their whole state (and count nothing).
      keep = lambda a, o: jnp.where(_per_example(active, a.ndim) > 0, a, o)
      return jax.tree.map(keep, new, s)._replace(i=s.i + 1)

    s = loops.bounded_while(lambda s: ~jnp.all(s.frozen), body, s, num_steps, unroll=unroll)
    fresh = s.found & ~carry.won
    better = ~carry.won & ~s.found & (s.loss_best > carry.loss)
    x_keep = jnp.where(b(fresh), s.x_adv, jnp.where(b(better), s.x_best, carry.x))
    return _Carry(x=x_keep, loss=jnp.where(better, s.loss_best, carry.loss),
                  won=carry.won | fresh, evals=s.evals)

  def run(n, carry: _Carry) -> _Carry:
    # The examples still robust first (stable), then as many chunks as they fill.
    order = jnp.argsort(carry.won, stable=True)
    todo = -(-jnp.sum(~carry.won) // chunk)

    def chunk_body(c: _Loop) -> _Loop:
      idx = jax.lax.dynamic_slice_in_dim(order, c.k * chunk, chunk)
      sub = jax.tree.map(lambda a: a[idx], c.carry)
      out = one_run(n, x0[idx], y[idx], targets[idx], eps[idx], keys[idx], sub)
      return _Loop(c.k + 1, jax.tree.map(lambda a, o: a.at[idx].set(o), c.carry, out))

    if padded == chunk:
      return one_run(n, x0, y, targets, eps, keys, carry)
    return loops.bounded_while(lambda c: c.k < todo, chunk_body, _Loop(jnp.zeros((), jnp.int32),
                               carry), padded // chunk, unroll=False).carry

  init = _Carry(x=x0, loss=jnp.full((padded,), -jnp.inf),
                won=jnp.arange(padded) >= batch,  # the padding needs no work
                evals=jnp.zeros((padded,), jnp.int32))
  num_runs = targets.shape[1] * num_restarts
  if num_runs == 1:
    out = run(0, init)
  else:
    out = loops.bounded_while(lambda r: ~jnp.all(r.carry.won),
                              lambda r: _Loop(r.k + 1, run(r.k, r.carry)),
                              _Loop(jnp.zeros((), jnp.int32), init), num_runs,
                              unroll=unroll).carry
  labels = targets[:batch, 0] if hit_target else y[:batch]
  return from_adversarial(logits_fn, x0[:batch], out.x[:batch], labels, targeted=hit_target,
                          num_grad_evals=out.evals[:batch])


def _random_start(keys, x, eps, norm):
  """The start of a run: uniform noise rescaled to L_inf norm epsilon (L_inf) or Gaussian
  noise rescaled to L2 norm epsilon (L2), added to x, then clipped to [0, 1]. One key per
  example (so an example's start does not depend on the others)."""
  e = _per_example(eps, x.ndim)
  shape, dtype = x.shape[1:], x.dtype
  if norm == "linf":
    t = jax.vmap(lambda k: jax.random.uniform(k, shape, dtype, -1.0, 1.0))(keys)
    t = t / jnp.maximum(_per_example(geometry.flat_norm(t, "linf"), x.ndim), geometry.TINY)
  else:
    t = geometry.unit_l2(jax.vmap(lambda k: jax.random.normal(k, shape, dtype))(keys))
  return project(x + e * t, x, eps, norm)
