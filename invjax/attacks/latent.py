"""Latent-inversion attacks on invertible classifiers.

An invertible classifier is `z = encode(x)` (a bijection), `logits = head(z)`
and `x = decode(z)`. Instead of optimising a perturbation in image space, the
attacker moves the latent code across the decision boundary and decodes it:

  * `method="closed_form"`: the minimal-norm latent step. For a linear head
    `logits = z @ A + b`, "class t beats class y by kappa" is the half-space
    `(A[:, t] - A[:, y]) . z' >= b_y - b_t + kappa`; its minimal-norm point is a
    projection. Untargeted: the cheapest half-space over t != y (exact: the
    feasible set is their union). Targeted: the intersection of the K - 1
    half-spaces `logit_t - logit_j >= kappa`, a K-dimensional dual QP solved by
    coordinate descent. Costs one encode and one decode.
  * `method="jacobian"`: the step with the smallest IMAGE-space cost, to first
    order. With `J = d encode / dx` at the current point, the head constraint
    `a . (J dx) >= m` has the minimal-L2 solution `dx = m J^T a / ||J^T a||^2`
    (the dual step `dx = J^T lambda`; several constraints: the same dual QP on
    the Gram matrix of the rows `J^T a_j`). Rows are vector-Jacobian products
    (K per iteration), the latent target `z + J dx` one Jacobian-vector product:
    the dense Jacobian is never formed. The latent target satisfies the head
    constraint exactly (the head is linear in z), so the decoded image is
    adversarial up to the decoder's accuracy; the step is re-linearised at the
    decoded point `num_iters` times (DeepFool-style), keeping the closest
    successful iterate. `decode_step="linear"` replaces the decode of the target by its
    first-order image `x + dx` (`J_decode = J^-1`): DeepFool on encode + head, no
    decoder pass; on ill-conditioned flows the exact decode of a boundary-crossing latent
    target can land far from x, its first-order image cannot. With `clip=True`, row components that would push a
    saturated pixel (0 or 1) outwards are dropped (exact for one constraint).
  * `method="optimize"`: starts from the Jacobian-aware point and runs projected
    Adam in latent space on `||decode(z') - x||^2`, projecting z' back onto the
    (latent, linear) adversarial set after every step, so every iterate stays
    adversarial while its image distance shrinks.

After the step, every iterate is projected onto the optional `epsilon` ball
(L2 or L_inf around x) and onto [0, 1] (`clip=True`), and success is always
re-checked by re-encoding the final image and applying the head. Clipping and the
epsilon projection remove part of a step's effect, often leaving the decoded
image a hair short of the boundary; a line search over `step_scales` (the latent
displacement `z' - z` of the last step times 1.1, 1.25, 1.5, 2 by default; one
decode and one encode per scale, each re-checked on the model, stopping once
every example succeeds) keeps the closest image that is adversarial after
clipping.

Cost counters (per batch call, as in `AttackResult`): `num_forward_evals`
counts encoder passes, `num_inverse_evals` decoder passes and `num_grad_evals`
Jacobian-vector / vector-Jacobian products (of the encoder, decoder, or of a
non-linear head when the head is a callable).

The bound `||x' - x||_2 <= Lip(decode) * ||z' - z||_2` is reported next to the
measured distance when `inverse_lipschitz` is given (`return_info=True`).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple, Union

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from invjax._src import checks
from invjax._src import compilation
from invjax._src.geometry import NORMS, TINY as _TINY, flat_norm as _flat_norm, project
from invjax._src import loops
from invjax.attacks import result as result_lib

Array = jax.Array
LinearHead = Tuple[Array, Array]
Head = Union[LinearHead, Callable[[Array], Array]]

METHODS = ("closed_form", "jacobian", "optimize")
DECODE_STEPS = ("exact", "linear")
# Line search of the closed form (multiples of the minimal latent step).
DEFAULT_STEP_SCALES = (1.1, 1.25, 1.5, 2.0)


class LatentInfo(NamedTuple):
  """Latent-space side of a latent attack (all batch-first).

  Attributes:
    z: [batch, D] latent code of the clean input.
    z_adv: [batch, D] latent code of the returned `x_adv` (re-encoded).
    latent_l2: [batch] `||z_adv - z||_2`.
    latent_linf: [batch] `max |z_adv - z|`.
    image_l2_bound: [batch] `inverse_lipschitz * latent_l2`, an upper bound of the
      measured image distance `result.l2`; None when no `inverse_lipschitz` was given.
  """
  z: Array
  z_adv: Array
  latent_l2: Array
  latent_linf: Array
  image_l2_bound: Optional[Array]


# ----------------------------------------------------------------------------
# Linear algebra: minimal-norm steps subject to linear constraints.
# ----------------------------------------------------------------------------


def _dual_norm(rows: Array, norm: str) -> Array:
  """||r||_2 for the L2 step, ||r||_1 (the dual of L_inf) for the L_inf step."""
  if norm == "l2":
    return jnp.sqrt(jnp.sum(jnp.square(rows), axis=-1))
  return jnp.sum(jnp.abs(rows), axis=-1)


def _single_row_step(row: Array, c: Array, norm: str) -> Array:
  """Minimal-norm d with `row . d >= c` (c <= 0 gives d = 0). row [B, P], c [B]."""
  c = jnp.maximum(c, 0.0)
  if norm == "l2":
    denom = jnp.maximum(jnp.sum(jnp.square(row), axis=-1), _TINY)
    return (c / denom)[:, None] * row
  denom = jnp.maximum(jnp.sum(jnp.abs(row), axis=-1), _TINY)
  return (c / denom)[:, None] * jnp.sign(row)


def _qp_dual(rows: Array, c: Array, active: Array, num_sweeps: int) -> Array:
  """Minimal-L2 d with `rows_i . d >= c_i` for every active i (dual coordinate descent).

  Solves max_{lambda >= 0} lambda.c - |rows^T lambda|^2 / 2 on the [C, C] Gram
  matrix and returns d = rows^T lambda.

  Args:
    rows: [B, C, P] constraint normals.
    c: [B, C] right-hand sides.
    active: bool [B, C]; inactive constraints are ignored.
    num_sweeps: coordinate-descent sweeps over the C constraints.

  Returns:
    d: [B, P].
  """
  gram = jnp.einsum("bip,bjp->bij", rows, rows)
  num_c = c.shape[1]
  diag = jnp.where(active, jnp.diagonal(gram, axis1=1, axis2=2), 1.0)
  diag = jnp.maximum(diag, _TINY)
  c = jnp.where(active, c, 0.0)

  def coord(i, lam):
    g_i = c[:, i] - jnp.einsum("bj,bj->b", gram[:, i, :], lam)
    new = jnp.maximum(lam[:, i] + g_i / diag[:, i], 0.0)
    return lam.at[:, i].set(jnp.where(active[:, i], new, 0.0))

  def sweep(_, lam):
    return jax.lax.fori_loop(0, num_c, coord, lam)

  lam = jax.lax.fori_loop(0, num_sweeps, sweep, jnp.zeros_like(c))
  return jnp.einsum("bc,bcp->bp", lam, rows)


def _min_norm_step(rows: Array, c: Array, active: Array, *, combine: str, norm: str,
                   num_sweeps: int) -> Array:
  """Smallest step d (in `norm`) with `rows_i . d >= c_i` for ANY / ALL active i.

  Args:
    rows: [B, C, P]; c: [B, C]; active: bool [B, C].
    combine: "any" (union of half-spaces: exact, the cheapest one) or "all"
      (intersection: exact dual QP for L2; for L_inf the most binding half-space,
      the other ones being fixed by re-linearising iterations).
    norm: "l2" or "linf".
    num_sweeps: QP sweeps (combine="all", norm="l2").

  Returns:
    d: [B, P].
  """
  if combine == "all" and norm == "l2":
    return _qp_dual(rows, c, active, num_sweeps)
  cost = jnp.maximum(c, 0.0) / jnp.maximum(_dual_norm(rows, norm), _TINY)
  if combine == "any":
    j = jnp.argmin(jnp.where(active, cost, jnp.inf), axis=1)
  else:
    j = jnp.argmax(jnp.where(active, cost, -jnp.inf), axis=1)
  row = jnp.take_along_axis(rows, j[:, None, None], axis=1)[:, 0]
  cj = jnp.take_along_axis(c, j[:, None], axis=1)[:, 0]
  return _single_row_step(row, cj, norm)


# ----------------------------------------------------------------------------
# Head linearisation and the adversarial constraints.
# ----------------------------------------------------------------------------


def _head(head_params, head_fn, z: Array) -> Tuple[Array, Array]:
  """Logits [B, K] and the local head Jacobian A [B, D, K] (exact for a linear head)."""
  if head_fn is None:
    a, b = head_params
    logits = z @ a + b
    return logits, jnp.broadcast_to(a, (z.shape[0],) + a.shape)
  logits, vjp = jax.vjp(lambda zz: head_fn(head_params, zz), z)
  eye = jnp.eye(logits.shape[-1], dtype=logits.dtype)
  grads = jax.vmap(lambda e: vjp(jnp.broadcast_to(e, logits.shape))[0])(eye)  # [K, B, D]
  return logits, jnp.moveaxis(grads, 0, -1)


def _constraints(logits: Array, a: Array, y: Array, target: Optional[Array], kappa):
  """Rows (gradients in z) [B, K, D], needed increase [B, K] and the active mask [B, K].

  Untargeted: row j is grad(logit_j - logit_y), need kappa - (logit_j - logit_y), j != y,
  combined with "any". Targeted: row j is grad(logit_t - logit_j), need
  kappa - (logit_t - logit_j), j != t, combined with "all".
  """
  num_classes = logits.shape[-1]
  rows_k = jnp.moveaxis(a, -1, 1)  # [B, K, D]
  ref = y if target is None else target
  a_ref = jnp.take_along_axis(rows_k, ref[:, None, None], axis=1)  # [B, 1, D]
  l_ref = jnp.take_along_axis(logits, ref[:, None], axis=1)  # [B, 1]
  active = jnp.arange(num_classes)[None, :] != ref[:, None]
  if target is None:
    return rows_k - a_ref, kappa - (logits - l_ref), active
  return a_ref - rows_k, kappa - (l_ref - logits), active


def _is_adv(logits, y, target):
  if target is None:
    return result_lib.is_adversarial(logits, y)
  return result_lib.is_adversarial(logits, target, targeted=True)


class _Best(NamedTuple):
  x: Array
  z: Array
  success: Array
  dist: Array


def _update_best(best: _Best, x_k, z_k, success_k, dist_k) -> _Best:
  better = success_k & (~best.success | (dist_k < best.dist))
  sel = lambda new, old: jnp.where(better.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
  return _Best(sel(x_k, best.x), sel(z_k, best.z), best.success | success_k,
               jnp.where(better, dist_k, best.dist))


# ----------------------------------------------------------------------------
# The jitted core.
# ----------------------------------------------------------------------------


@functools.partial(
    compilation.jit,
    static_argnames=("encode", "decode", "head_fn", "method", "norm", "num_iters",
                     "num_steps", "clip", "qp_sweeps", "num_candidates", "unroll",
                     "unroll_opt", "linear_decode"))
def _attack_core(params, head_params, x, y, target, kappa, epsilon, overshoot, learning_rate,
                 step_scales, *, encode, decode, head_fn, method, norm, num_iters, num_steps, clip,
                 qp_sweeps, num_candidates, unroll, unroll_opt, linear_decode=False):
  """(x_adv, z_adv = encode(x_adv), success re-checked on the model, z0 = encode(x),
  number of line-search scales tried)."""
  batch = x.shape[0]
  combine = "any" if target is None else "all"
  enc = lambda xx: encode(params, xx)
  dec = lambda zz: decode(params, zz)
  proj = lambda xx: project(xx, x, epsilon, norm, clip=clip)

  def dist(xx):
    return _flat_norm(xx - x, norm)

  def check(x_k, z_k, best):
    logits_k, a_k = _head(head_params, head_fn, z_k)
    best = _update_best(best, x_k, z_k, _is_adv(logits_k, y, target), dist(x_k))
    return best, logits_k, a_k

  if method == "closed_form":
    z0 = enc(x)
    best0 = _Best(x, z0, jnp.zeros((batch,), bool), jnp.full((batch,), jnp.inf, x.dtype))

    def body(_, state):
      x_k, z_k, z_tgt, best = state
      best, logits_k, a_k = check(x_k, z_k, best)
      rows, need, active = _constraints(logits_k, a_k, y, target, kappa)
      # The first step is the minimal-norm step from z0; later ones add the minimal step
      # that fixes what is still missing at the re-encoded (projected / clipped) image.
      dz = _min_norm_step(rows, need, active, combine=combine, norm="l2", num_sweeps=qp_sweeps)
      z_tgt = z_tgt + (1.0 + overshoot) * dz
      x_next = proj(dec(z_tgt))
      return x_next, enc(x_next), z_tgt, best

    x_n, z_n, z_tgt, best = loops.fori(num_iters, body, (x, z0, z0, best0), unroll=unroll)
    best, _, _ = check(x_n, z_n, best)

  else:
    z_like = jnp.zeros(jax.eval_shape(enc, x).shape, x.dtype)
    best0 = _Best(x, z_like, jnp.zeros((batch,), bool), jnp.full((batch,), jnp.inf, x.dtype))

    def body(k, state):
      x_k, z0, _, best = state
      z_k, jvp_fn = jax.linearize(enc, x_k)
      vjp_fn = jax.linear_transpose(jvp_fn, x_k)
      z0 = jnp.where(k == 0, z_k, z0)  # x_0 = x
      best, logits_k, a_k = check(x_k, z_k, best)
      rows_z, need, active = _constraints(logits_k, a_k, y, target, kappa)
      if num_candidates is not None and target is None:
        # DeepFool's candidate classes: only the top logits other than y are tried.
        score = jnp.where(active, logits_k, -jnp.inf)
        _, idx = jax.lax.top_k(score, num_candidates)
        rows_z = jnp.take_along_axis(rows_z, idx[:, :, None], axis=1)
        need = jnp.take_along_axis(need, idx, axis=1)
        active = jnp.take_along_axis(active, idx, axis=1)
      rows_x = jax.vmap(lambda r: vjp_fn(r)[0], in_axes=1, out_axes=1)(rows_z)
      rows_x = rows_x.reshape(batch, rows_x.shape[1], -1)
      if clip:
        # Saturated pixels can only move inwards: dropping the outward components of a
        # row gives the exact minimal step under those box constraints (one row).
        xf = x.reshape(batch, 1, -1)
        outward = ((xf <= 0.0) & (rows_x < 0)) | ((xf >= 1.0) & (rows_x > 0))
        rows_x = jnp.where(outward, 0.0, rows_x)
      c = need + jnp.einsum("bkp,bp->bk", rows_x, (x_k - x).reshape(batch, -1))
      dx = _min_norm_step(rows_x, c, active, combine=combine, norm=norm, num_sweeps=qp_sweeps)
      x_lin = x + (1.0 + overshoot) * dx.reshape(x.shape)
      if linear_decode:
        # The latent target z_k + J dx decoded to first order: J_decode = J^-1, so it
        # lands at x_lin exactly. The carried "target" is then this image.
        return proj(x_lin), z0, x_lin, best
      z_next = z_k + jvp_fn(x_lin - x_k)
      x_next = proj(dec(z_next))
      return x_next, z0, z_next, best

    tgt0 = x if linear_decode else z_like
    x_n, z0, z_tgt, best = loops.fori(num_iters, body, (x, z_like, tgt0, best0),
                                      unroll=unroll)
    z_n = enc(x_n)
    best, _, _ = check(x_n, z_n, best)

  if step_scales is not None:
    # Line search along the latent displacement of the last step: what clipping / the
    # epsilon ball took away is made up by a longer step in the same latent direction.
    # Scales are tried in order; an example keeps the first scale that works, and the
    # search stops once every example succeeded (unrolled: all scales run, masked).
    def scale_body(state):
      i, best = state
      if linear_decode:  # along the image displacement of the last step
        x_s = proj(x + step_scales[i] * (z_tgt - x))
      else:
        x_s = proj(dec(z0 + step_scales[i] * (z_tgt - z0)))
      z_s = enc(x_s)
      logits_s, _ = _head(head_params, head_fn, z_s)
      new = _is_adv(logits_s, y, target) & ~best.success
      return i + 1, _update_best(best, x_s, z_s, new, dist(x_s))

    num_scales_tried, best = loops.bounded_while(
        lambda state: ~jnp.all(state[1].success), scale_body, (0, best),
        step_scales.shape[0], unroll=unroll)
  else:
    num_scales_tried = 0

  if method == "optimize":
    # Projected Adam in latent space from the Jacobian-aware point (or the last
    # iterate where it failed), keeping the best feasible decoded image.
    z_start = jnp.where(best.success[:, None], best.z, z_n)
    opt = optax.adam(learning_rate)

    def loss_fn(zz):
      xd = dec(zz)
      return jnp.sum(jnp.square(xd - x)), xd

    def feasible_projection(zz):
      logits_z, a_z = _head(head_params, head_fn, zz)
      rows, need, active = _constraints(logits_z, a_z, y, target, kappa)
      dz = _min_norm_step(rows, need, active, combine=combine, norm="l2",
                          num_sweeps=qp_sweeps)
      return zz + (1.0 + overshoot) * dz

    def opt_step(_, state):
      zz, opt_state, cand = state
      (_, xd), g = jax.value_and_grad(loss_fn, has_aux=True)(zz)
      logits_z, _ = _head(head_params, head_fn, zz)
      xp = proj(xd)
      cand = _update_best(cand, xp, zz, _is_adv(logits_z, y, target), dist(xp))
      upd, opt_state = opt.update(g, opt_state, zz)
      zz = feasible_projection(optax.apply_updates(zz, upd))
      return zz, opt_state, cand

    z_feas = feasible_projection(z_start)
    cand0 = _Best(x, z_like, jnp.zeros((batch,), bool), jnp.full((batch,), jnp.inf, x.dtype))
    _, _, cand = loops.fori(num_steps, opt_step, (z_feas, opt.init(z_feas), cand0),
                            unroll=unroll_opt)
    # Re-check the optimiser's candidate on the model (re-encode); keep it if it wins.
    z_cand = enc(cand.x)
    logits_c, _ = _head(head_params, head_fn, z_cand)
    ok = _is_adv(logits_c, y, target) & cand.success
    best = _update_best(best, cand.x, z_cand, ok, dist(cand.x))

  # Every candidate's success was measured by encoding that exact image and applying
  # the head; the returned image is the closest successful one, else the last iterate.
  keep = best.success.reshape((-1,) + (1,) * (x.ndim - 1))
  x_adv = jnp.where(keep, best.x, x_n)
  z_adv = jnp.where(best.success[:, None], best.z, z_n)
  return x_adv, z_adv, best.success, z0, jnp.asarray(num_scales_tried, jnp.int32)


# ----------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _drop_params(fn):
  return lambda _, v: fn(v)


@functools.lru_cache(maxsize=None)
def _model_method(model, method: str):
  return lambda variables, v: model.apply(variables, v, method=method)


def _validate(x, y, target, kappa, epsilon, method, norm, num_classes, num_iters, num_steps):
  checks.check_images(x, "x", rank=(2, 3, 4))
  checks.check_labels(y, x.shape[0], "y", num_classes)
  if target is not None:
    checks.check_labels(target, x.shape[0], "target", num_classes)
    if checks.is_concrete(target) and checks.is_concrete(y) and np.any(
        np.asarray(target) == np.asarray(y)):
      raise checks.InvjaxError("target must differ from the true label y for every example")
  if method not in METHODS:
    raise checks.InvjaxError(f"method must be one of {METHODS}, got {method!r}")
  if norm not in NORMS:
    raise checks.InvjaxError(f"norm must be one of {NORMS}, got {norm!r}")
  checks.check_positive(kappa, "kappa", strict=False)
  if epsilon is not None:
    checks.check_positive(epsilon, "epsilon")
  if num_iters < 1:
    raise checks.InvjaxError(f"num_iters must be >= 1, got {num_iters}")
  if num_steps < 0:
    raise checks.InvjaxError(f"num_steps must be >= 0, got {num_steps}")


def _run(params, encode, decode, head_params, head_fn, x, y, *, target, kappa, method,
         epsilon, norm, num_iters, num_steps, learning_rate, overshoot, clip, qp_sweeps,
         inverse_lipschitz, return_info, num_classes, num_candidates=None,
         step_scales=DEFAULT_STEP_SCALES, unroll=None, decode_step="exact"):
  if decode_step not in DECODE_STEPS:
    raise checks.InvjaxError(f"decode_step must be one of {DECODE_STEPS}, got {decode_step!r}")
  if decode_step == "linear" and method == "closed_form":
    raise checks.InvjaxError(
        "decode_step='linear' needs the Jacobian of the encoder: use method='jacobian' or "
        "'optimize' (the closed-form step is taken in latent space only)")
  linear_decode = decode_step == "linear"
  if num_iters is None:
    num_iters = 1 if method == "closed_form" else 3
  if step_scales is None or len(step_scales) == 0:
    step_scales = None
  else:
    step_scales = np.asarray(step_scales, np.float64)
    if step_scales.ndim != 1 or not np.all(np.isfinite(step_scales)) or np.any(step_scales <= 0):
      raise checks.InvjaxError(
          f"step_scales must be a sequence of finite positive numbers, got {step_scales}")
  _validate(x, y, target, kappa, epsilon, method, norm, num_classes, num_iters, num_steps)
  checks.check_positive(overshoot, "overshoot", strict=False)
  if num_candidates is not None:
    if not 1 <= int(num_candidates) <= num_classes - 1:
      raise checks.InvjaxError(
          f"num_candidates must lie in [1, {num_classes - 1}], got {num_candidates}")
    num_candidates = int(num_candidates)
    if num_candidates == num_classes - 1:
      num_candidates = None
  if inverse_lipschitz is not None:
    checks.check_positive(inverse_lipschitz, "inverse_lipschitz")
  x = jnp.asarray(x)
  y = jnp.asarray(y)
  target = None if target is None else jnp.asarray(target)
  x_adv, z_adv, success, z0, n_s = _attack_core(
      params, head_params, x, y, target, jnp.asarray(kappa, x.dtype),
      None if epsilon is None else jnp.asarray(epsilon, x.dtype),
      jnp.asarray(overshoot, x.dtype), jnp.asarray(learning_rate, x.dtype),
      None if step_scales is None else jnp.asarray(step_scales, x.dtype),
      encode=encode, decode=decode, head_fn=head_fn, method=method, norm=norm,
      num_iters=int(num_iters), num_steps=int(num_steps) if method == "optimize" else 0,
      clip=bool(clip), qp_sweeps=int(qp_sweeps),
      unroll=loops.resolve_unroll(unroll, num_iters),
      unroll_opt=loops.resolve_unroll(unroll, num_steps) if method == "optimize" else False,
      num_candidates=num_candidates if method != "closed_form" else None,
      linear_decode=linear_decode)
  chex.assert_equal_shape((x_adv, x))
  num_heads = 0 if head_fn is None else 1
  k = num_classes
  # n_s: line-search scales actually tried (1 decode + 1 encode each; the search stops
  # as soon as every example succeeds).
  if method == "closed_form":
    fwd, inv, grad = 1 + num_iters + n_s, num_iters + n_s, num_heads * (num_iters + n_s) * k
  else:
    rows = k if (num_candidates is None or target is not None) else num_candidates
    fwd, inv = num_iters + 1 + n_s, num_iters + n_s
    grad = num_iters * (rows + 1 + num_heads * k) + n_s * num_heads * k
    if linear_decode:  # no decoder pass and no Jacobian-vector product per step
      inv, grad = 0 * n_s, grad - num_iters
    if method == "optimize":
      fwd, inv, grad = fwd + 1, inv + num_steps, grad + num_steps * (1 + num_heads * k)
  linf, l2 = result_lib.distances(x, x_adv)
  res = result_lib.AttackResult(
      x_adv=x_adv, success=success, linf=linf, l2=l2,
      num_grad_evals=jnp.asarray(grad, jnp.int32),
      num_forward_evals=jnp.asarray(fwd, jnp.int32),
      num_inverse_evals=jnp.asarray(inv, jnp.int32))
  if not return_info:
    return res
  dz = z_adv - z0
  latent_l2 = jnp.sqrt(jnp.sum(jnp.square(dz), axis=1))
  bound = None if inverse_lipschitz is None else inverse_lipschitz * latent_l2
  return res, LatentInfo(z0, z_adv, latent_l2, jnp.max(jnp.abs(dz), axis=1), bound)


def latent_attack(encode_fn: Callable[[Array], Array], decode_fn: Callable[[Array], Array],
                  head: Head, x: Array, y: Array, *, key: Optional[Array] = None,
                  target: Optional[Array] = None, kappa: float = 0.0,
                  method: str = "closed_form", epsilon: Optional[float] = None,
                  norm: str = "l2", num_iters: Optional[int] = None, num_steps: int = 20,
                  learning_rate: float = 1e-3, overshoot: float = 0.02, clip: bool = True,
                  qp_sweeps: int = 200, inverse_lipschitz: Optional[float] = None,
                  num_candidates: Optional[int] = None,
                  step_scales: Optional[Sequence[float]] = DEFAULT_STEP_SCALES,
                  unroll: Optional[bool] = None, return_info: bool = False,
                  decode_step: str = "exact"):
  """Latent-inversion attack on an invertible classifier given as pure functions.

  Args:
    encode_fn: `[batch, ...] -> [batch, D]`, the bijection x -> z.
    decode_fn: `[batch, D] -> [batch, ...]`, its inverse.
    head: `(A [D, K], b [K])` with `logits = z @ A + b`, or a callable
      `z [batch, D] -> logits [batch, K]` (linearised locally at every iteration).
    x: float [batch, ...] clean inputs in [0, 1].
    y: int [batch] true labels.
    key: unused (the attacks are deterministic); accepted for the common signature.
    target: int [batch] target classes (targeted attack), or None (untargeted).
    kappa: required logit margin (>= 0).
    method: "closed_form", "jacobian" or "optimize" (see module docstring).
    epsilon: optional radius of the `norm` ball the adversarial images are projected on.
    norm: "l2" or "linf": the epsilon ball, the image distance that ranks iterates, and
      (method="jacobian") the image-space norm of the minimal step. The closed-form
      latent step is always the minimal L2 (Euclidean projection) one.
    num_iters: re-linearisations (default 1 for closed_form, 3 otherwise).
    num_steps: projected-Adam steps (method="optimize").
    learning_rate: Adam learning rate in latent units (method="optimize").
    overshoot: the step is multiplied by (1 + overshoot) to land past the boundary.
    clip: project onto [0, 1].
    qp_sweeps: coordinate-descent sweeps of the targeted dual QP.
    inverse_lipschitz: a bound on Lip(decode); gives `LatentInfo.image_l2_bound`.
    num_candidates: untargeted Jacobian-aware steps only try the `num_candidates`
      classes with the highest logits (besides y), as DeepFool does: that many
      vector-Jacobian products per iteration instead of K (None: all classes).
    step_scales: the latent displacement of the last step is also tried scaled by
      each of these factors, in order, until every example succeeds (one decode +
      one encode each); the closest image that is adversarial after clipping /
      projection is kept. None or () turns the line search off.
    unroll: trace the iterations as straight-line code instead of `lax` loops (same
      result). None: on CPU, where XLA runs convolutions inside loops ~3x slower
      (`invjax._src.loops`).
    return_info: also return a `LatentInfo`.
    decode_step: "exact" decodes each latent target `z + J dx` with `decode`; "linear"
      (methods "jacobian" / "optimize") takes its first-order image `x + dx` instead
      (`J_decode = J^-1`), which is DeepFool on encode + head. On ill-conditioned flows
      the exact decode of a latent step that crosses the boundary can land far from x
      (README, "Transfer through a distilled student"); the first-order image cannot.

  Returns:
    `AttackResult` (success re-checked by re-encoding `x_adv`), or
    `(AttackResult, LatentInfo)` when `return_info`.
  """
  del key
  if isinstance(head, (tuple, list)):
    a, b = (jnp.asarray(h) for h in head)
    checks.check_rank(a, 2, "head A")
    checks.check_shape(b, (a.shape[1],), "head b")
    head_params, head_fn, num_classes = (a, b), None, int(a.shape[1])
  elif callable(head):
    head_params, head_fn = None, _drop_params(head)
    z_shape = jax.eval_shape(encode_fn, jnp.asarray(x) if hasattr(x, "shape") else x)
    num_classes = int(jax.eval_shape(head, z_shape).shape[-1])
  else:
    raise checks.InvjaxError(f"head must be (A, b) or a callable, got {type(head)}")
  return _run(None, _drop_params(encode_fn), _drop_params(decode_fn), head_params, head_fn,
              x, y, target=target, kappa=kappa, method=method, epsilon=epsilon, norm=norm,
              num_iters=num_iters, num_steps=num_steps, learning_rate=learning_rate,
              overshoot=overshoot, clip=clip, qp_sweeps=qp_sweeps,
              inverse_lipschitz=inverse_lipschitz, return_info=return_info,
              num_classes=num_classes, num_candidates=num_candidates, step_scales=step_scales,
              unroll=unroll, decode_step=decode_step)


def latent_attack_from_model(model: Any, variables: Any, x: Array, y: Array, *,
                             use_linear_head: bool = True, **kwargs):
  """`latent_attack` on an `InvertibleClassifier`-style Flax module.

  Uses `model.apply(variables, x, method="encode")`, `method="decode"` and either
  the exact linear head `method="linear_head"` (when the model has one and
  `use_linear_head`) or `method="logits"`. Compiled once per (model, method).

  Args:
    model: Flax module with `encode`, `decode`, `logits` (and optionally `linear_head`).
    variables: its variables.
    x, y: as in `latent_attack`.
    use_linear_head: use `linear_head()` for the exact closed form.
    **kwargs: forwarded to `latent_attack` (target, kappa, method, epsilon, norm, ...).

  Returns:
    As `latent_attack`.
  """
  kwargs.pop("key", None)
  if use_linear_head and hasattr(model, "linear_head"):
    a, b = model.apply(variables, method="linear_head")
    head_params, head_fn, num_classes = (a, b), None, int(a.shape[1])
  else:
    head_params, head_fn = variables, _model_method(model, "logits")
    z_shape = jax.eval_shape(lambda v: model.apply(variables, v, method="encode"),
                             jnp.asarray(x))
    num_classes = int(jax.eval_shape(
        lambda v: model.apply(variables, v, method="logits"), z_shape).shape[-1])
  defaults = dict(target=None, kappa=0.0, method="closed_form", epsilon=None, norm="l2",
                  num_iters=None, num_steps=20, learning_rate=1e-3, overshoot=0.02, clip=True,
                  qp_sweeps=200, inverse_lipschitz=None, return_info=False,
                  num_candidates=None, step_scales=DEFAULT_STEP_SCALES, unroll=None,
                  decode_step="exact")
  unknown = set(kwargs) - set(defaults)
  if unknown:
    raise checks.InvjaxError(f"unknown arguments to latent_attack_from_model: {sorted(unknown)}")
  defaults.update(kwargs)
  return _run(variables, _model_method(model, "encode"), _model_method(model, "decode"),
              head_params, head_fn, x, y, num_classes=num_classes, **defaults)
