"""The compiled core of `invjax.attacks.latent`: one function per method, one line search.

Each method walks from x through decoded iterates (`closed_form`: minimal latent steps;
`jacobian`: minimal image steps through the encoder's Jacobian), re-checking every
iterate on the model (encode, then the head) and keeping the closest successful one.
`line_search` then tries the last step scaled by `step_scales` (what clipping and the
epsilon ball took away is made up by a longer step in the same direction), and
`optimize` runs projected Adam in latent space from the result. The maths of each step
is in the docstring of `invjax.attacks.latent`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from invjax._src import compilation
from invjax._src import loops
from invjax._src.geometry import flat_norm, project
from invjax.attacks import latent_geometry as geo

Array = jax.Array


class Best(NamedTuple):
  """The closest successful iterate so far, per example (x [B, ...], z [B, D], [B], [B])."""
  x: Array
  z: Array
  success: Array
  dist: Array


def no_best(x: Array, z: Array) -> Best:
  """No success yet: `x` and `z` only fill the slots (they are returned where nothing wins)."""
  batch = x.shape[0]
  return Best(x, z, jnp.zeros((batch,), bool), jnp.full((batch,), jnp.inf, x.dtype))


def update_best(best: Best, x_k, z_k, success_k, dist_k) -> Best:
  """Keeps (x_k, z_k) where it succeeds and is closer than the best (or the first success)."""
  better = success_k & (~best.success | (dist_k < best.dist))
  sel = lambda new, old: jnp.where(better.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
  return Best(sel(x_k, best.x), sel(z_k, best.z), best.success | success_k,
              jnp.where(better, dist_k, best.dist))


class Problem(NamedTuple):
  """One attack: the model as `(params, value)` functions, the clean batch, the criterion."""
  params: Any
  head_params: Any
  x: Array
  y: Array
  target: Optional[Array]
  kappa: Array
  epsilon: Optional[Array]
  overshoot: Array
  encode: Callable
  decode: Callable
  head_fn: Optional[Callable]
  norm: str
  clip: bool
  qp_sweeps: int

  def enc(self, xx):
    return self.encode(self.params, xx)

  def dec(self, zz):
    return self.decode(self.params, zz)

  def proj(self, xx):
    """Onto the epsilon ball around x and (with `clip`) onto [0, 1]."""
    return project(xx, self.x, self.epsilon, self.norm, clip=self.clip)

  def dist(self, xx):
    return flat_norm(xx - self.x, self.norm)

  @property
  def combine(self) -> str:
    return geo.combine_for(self.target)

  def head(self, zz):
    """Logits and the head's Jacobian at zz."""
    return geo.linearize_head(self.head_params, self.head_fn, zz)

  def succeeds(self, logits):
    return geo.is_adversarial(logits, self.y, self.target)

  def constraints(self, logits, a):
    return geo.constraints(logits, a, self.y, self.target, self.kappa)

  def latent_step(self, logits, a):
    """(1 + overshoot) times the minimal-L2 latent step across the head linearised there."""
    rows, need, active = self.constraints(logits, a)
    dz = geo.min_norm_step(rows, need, active, combine=self.combine, norm="l2",
                           num_sweeps=self.qp_sweeps)
    return (1.0 + self.overshoot) * dz

  def check(self, best: Best, x_k, z_k):
    """Re-checks the iterate x_k (z_k = encode(x_k)) on the head and keeps it in `best` if
    it wins; also returns the head's logits and Jacobian at z_k."""
    logits, a = self.head(z_k)
    return update_best(best, x_k, z_k, self.succeeds(logits), self.dist(x_k)), logits, a


class Walk(NamedTuple):
  """The iterations of a method: the best re-checked iterate, the last iterate, and the last
  step as the segment `start -> end` the line search extends."""
  best: Best
  x_last: Array
  z_last: Array  # encode(x_last)
  z0: Array  # encode(x)
  start: Array  # z0, or x when the step is taken in image space (decode_step="linear")
  end: Array  # the last step's latent target (or image target)


class _ClosedFormState(NamedTuple):
  x: Array
  z: Array  # encode(x)
  z_target: Array
  best: Best


def closed_form(p: Problem, *, num_iters: int, unroll: bool) -> Walk:
  """Minimal-norm latent steps: the first from z0, each later one adding the minimal step
  that fixes what is still missing at the re-encoded (projected / clipped) image."""
  z0 = p.enc(p.x)

  def body(_, s: _ClosedFormState) -> _ClosedFormState:
    best, logits, a = p.check(s.best, s.x, s.z)
    z_target = s.z_target + p.latent_step(logits, a)
    x_next = p.proj(p.dec(z_target))
    return _ClosedFormState(x_next, p.enc(x_next), z_target, best)

  s = loops.fori(num_iters, body, _ClosedFormState(p.x, z0, z0, no_best(p.x, z0)),
                 unroll=unroll)
  best, _, _ = p.check(s.best, s.x, s.z)
  return Walk(best, s.x, s.z, z0, z0, s.z_target)


def _top_candidates(logits, rows, need, active, num_candidates: int):
  """DeepFool's candidate classes: only the `num_candidates` top logits other than y."""
  _, idx = jax.lax.top_k(jnp.where(active, logits, -jnp.inf), num_candidates)
  return (jnp.take_along_axis(rows, idx[:, :, None], axis=1),
          jnp.take_along_axis(need, idx, axis=1), jnp.take_along_axis(active, idx, axis=1))


def _image_step(p: Problem, x_k, logits, a, vjp_fn, num_candidates: Optional[int]):
  """The minimal image step dx [B, P] (in `p.norm`) from x_k across the head linearised
  through the encoder (`vjp_fn`: the transposed Jacobian of encode at x_k)."""
  batch = p.x.shape[0]
  rows_z, need, active = p.constraints(logits, a)
  if num_candidates is not None and p.target is None:
    rows_z, need, active = _top_candidates(logits, rows_z, need, active, num_candidates)
  rows_x = jax.vmap(lambda r: vjp_fn(r)[0], in_axes=1, out_axes=1)(rows_z)
  rows_x = rows_x.reshape(batch, rows_x.shape[1], -1)
  if p.clip:
    # Saturated pixels can only move inwards: dropping the outward components of a
    # row gives the exact minimal step under those box constraints (one row).
    xf = p.x.reshape(batch, 1, -1)
    outward = ((xf <= 0.0) & (rows_x < 0)) | ((xf >= 1.0) & (rows_x > 0))
    rows_x = jnp.where(outward, 0.0, rows_x)
  c = need + jnp.einsum("bkp,bp->bk", rows_x, (x_k - p.x).reshape(batch, -1))
  return geo.min_norm_step(rows_x, c, active, combine=p.combine, norm=p.norm,
                           num_sweeps=p.qp_sweeps)


class _JacobianState(NamedTuple):
  x: Array
  z0: Array  # encode(x), set by the first linearisation
  target: Array  # the last step's latent target z_k + J dx (its image x + dx: "linear")
  best: Best


def jacobian(p: Problem, *, num_iters: int, num_candidates: Optional[int],
             linear_decode: bool, unroll: bool) -> Walk:
  """Minimal image steps through the encoder's Jacobian, re-linearised at each decoded
  iterate (DeepFool-style); `linear_decode` takes the first-order image of each latent
  target (`J_decode = J^-1`) instead of decoding it."""
  x = p.x
  z_like = jnp.zeros(jax.eval_shape(p.enc, x).shape, x.dtype)

  def body(k, s: _JacobianState) -> _JacobianState:
    z_k, jvp_fn = jax.linearize(p.enc, s.x)
    vjp_fn = jax.linear_transpose(jvp_fn, s.x)
    z0 = jnp.where(k == 0, z_k, s.z0)  # x_0 = x
    best, logits, a = p.check(s.best, s.x, z_k)
    dx = _image_step(p, s.x, logits, a, vjp_fn, num_candidates)
    x_lin = x + (1.0 + p.overshoot) * dx.reshape(x.shape)
    if linear_decode:
      # The latent target z_k + J dx decoded to first order lands at x_lin exactly.
      return _JacobianState(p.proj(x_lin), z0, x_lin, best)
    z_next = z_k + jvp_fn(x_lin - s.x)
    return _JacobianState(p.proj(p.dec(z_next)), z0, z_next, best)

  init = _JacobianState(x, z_like, x if linear_decode else z_like, no_best(x, z_like))
  s = loops.fori(num_iters, body, init, unroll=unroll)
  z_n = p.enc(s.x)
  best, _, _ = p.check(s.best, s.x, z_n)
  return Walk(best, s.x, z_n, s.z0, x if linear_decode else s.z0, s.target)


class _SearchState(NamedTuple):
  num_tried: Array
  best: Best


def line_search(p: Problem, walk: Walk, step_scales: Optional[Array], *,
                linear_decode: bool, unroll: bool):
  """The last step `start -> end` scaled by each of `step_scales`, in order, re-checked on
  the model: an example keeps the first scale that works (if it had no success yet), and
  the search stops once every example succeeded (unrolled: all scales run, masked).

  Returns:
    (best, number of scales tried).
  """
  if step_scales is None:
    return walk.best, 0

  def body(s: _SearchState) -> _SearchState:
    point = walk.start + step_scales[s.num_tried] * (walk.end - walk.start)
    x_s = p.proj(point if linear_decode else p.dec(point))
    z_s = p.enc(x_s)
    logits, _ = p.head(z_s)
    new = p.succeeds(logits) & ~s.best.success
    return _SearchState(s.num_tried + 1, update_best(s.best, x_s, z_s, new, p.dist(x_s)))

  s = loops.bounded_while(lambda s: ~jnp.all(s.best.success), body,
                          _SearchState(0, walk.best), step_scales.shape[0], unroll=unroll)
  return s.best, s.num_tried


class _AdamState(NamedTuple):
  z: Array
  opt_state: Any
  best: Best  # the closest feasible decoded image (re-checked after the loop)


def optimize(p: Problem, best: Best, z_last: Array, *, learning_rate, num_steps: int,
             unroll: bool) -> Best:
  """Projected Adam in latent space on `||decode(z) - x||^2` from the best point (or the
  last iterate where none succeeded), z projected back onto the (latent, linear)
  adversarial set after every step; the best feasible decoded image is re-checked on the
  model (re-encoded) and kept if it wins."""
  x = p.x
  z_start = jnp.where(best.success[:, None], best.z, z_last)
  opt = optax.adam(learning_rate)

  def loss_fn(zz):
    xd = p.dec(zz)
    return jnp.sum(jnp.square(xd - x)), xd

  def feasible(zz):
    logits, a = p.head(zz)
    return zz + p.latent_step(logits, a)

  def body(_, s: _AdamState) -> _AdamState:
    (_, xd), g = jax.value_and_grad(loss_fn, has_aux=True)(s.z)
    logits, _ = p.head(s.z)
    xp = p.proj(xd)
    cand = update_best(s.best, xp, s.z, p.succeeds(logits), p.dist(xp))
    upd, opt_state = opt.update(g, s.opt_state, s.z)
    return _AdamState(feasible(optax.apply_updates(s.z, upd)), opt_state, cand)

  z_feas = feasible(z_start)
  init = _AdamState(z_feas, opt.init(z_feas), no_best(x, jnp.zeros(z_last.shape, x.dtype)))
  cand = loops.fori(num_steps, body, init, unroll=unroll).best
  z_cand = p.enc(cand.x)
  logits, _ = p.head(z_cand)
  ok = p.succeeds(logits) & cand.success
  return update_best(best, cand.x, z_cand, ok, p.dist(cand.x))


class CoreResult(NamedTuple):
  """x_adv, z_adv = encode(x_adv), success re-checked on the model, z0 = encode(x) and the
  number of line-search scales tried."""
  x_adv: Array
  z_adv: Array
  success: Array
  z0: Array
  num_scales_tried: Array


@functools.partial(
    compilation.jit,
    static_argnames=("encode", "decode", "head_fn", "method", "norm", "num_iters",
                     "num_steps", "clip", "qp_sweeps", "num_candidates", "unroll",
                     "unroll_opt", "linear_decode"))
def attack_core(params, head_params, x, y, target, kappa, epsilon, overshoot, learning_rate,
                step_scales, *, encode, decode, head_fn, method, norm, num_iters, num_steps,
                clip, qp_sweeps, num_candidates, unroll, unroll_opt,
                linear_decode=False) -> CoreResult:
  """One latent attack, compiled; encode / decode / head_fn take (params, value)."""
  p = Problem(params, head_params, x, y, target, kappa, epsilon, overshoot, encode, decode,
              head_fn, norm, clip, qp_sweeps)
  if method == "closed_form":
    walk = closed_form(p, num_iters=num_iters, unroll=unroll)
  else:
    walk = jacobian(p, num_iters=num_iters, num_candidates=num_candidates,
                    linear_decode=linear_decode, unroll=unroll)
  best, num_tried = line_search(p, walk, step_scales, linear_decode=linear_decode,
                                unroll=unroll)
  if method == "optimize":
    best = optimize(p, best, walk.z_last, learning_rate=learning_rate, num_steps=num_steps,
                    unroll=unroll_opt)
  # Every candidate's success was measured by encoding that exact image and applying
  # the head; the returned image is the closest successful one, else the last iterate.
  keep = best.success.reshape((-1,) + (1,) * (x.ndim - 1))
  x_adv = jnp.where(keep, best.x, walk.x_last)
  z_adv = jnp.where(best.success[:, None], best.z, walk.z_last)
  return CoreResult(x_adv, z_adv, best.success, walk.z0, jnp.asarray(num_tried, jnp.int32))
