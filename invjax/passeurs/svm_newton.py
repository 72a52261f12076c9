"""Primal Newton-PCG for the squared-hinge linear SVM, all classes at once (LIBLINEAR `-s 2`).

Truncated Newton with preconditioned conjugate gradients (LIBLINEAR's newton.cpp) and an exact
line search on the piecewise quadratic objective, written batched over classes: every pass over
the features is one `lax.scan` over row blocks (`to_blocks`) doing `[B, d] x [d, classes]`
products; the `while_loop`s run until the slowest class is done, freezing the others. Pieces:
`_grad_pass` (scores, P, gradient, diagonal of H), `_hvp_pass` (H v), `_cg` / `_cg_step`,
`_line_search`, `_newton_step`; the loop states are `_CGState` and `_NewtonState`. See
`svm_solvers` for the problem and `newton_squared_hinge` for the stopping rule.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from invjax._src.checks import InvjaxError
from invjax.passeurs.svm_solvers import BinaryResult
from invjax.passeurs.svm_solvers import dot as _dot


def to_blocks(x, block_size: int):
  """Pads [n, d] rows to a multiple of the block size: ([blocks, B, d], valid [blocks, B])."""
  n = x.shape[0]
  bs = min(block_size, n)
  nb = -(-n // bs)
  pad = nb * bs - n
  valid = jnp.arange(nb * bs) < n
  if pad:
    x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
  return x.reshape((nb, bs) + x.shape[1:]), valid.reshape(nb, bs)


class _Blocks(NamedTuple):
  """One batched Newton problem: the features in row blocks and the constants of every pass."""
  xb: jax.Array       # [blocks, B, d] features
  yb: jax.Array       # [blocks, B, K] labels in {-1, +1}, 0 on padding rows (never active)
  vmask: jax.Array    # [blocks, B, 1] bool, False on padding rows
  c: jax.Array        # the SVM's C
  bmask: jax.Array    # 1 when b is a variable, else 0
  precond_mix: float  # M = (1 - mix) + mix * diag(H)


class _Sums(NamedTuple):
  """Per-class sums over the active rows, accumulated block by block by `_grad_pass`."""
  gw: jax.Array       # [K, d] sum_i r_i x_i, r = z - y on active rows
  mw: jax.Array       # [K, d] sum_i x_i^2 on active rows
  gb: jax.Array       # [K] sum_i r_i
  mb: jax.Array       # [K] number of active rows
  loss: jax.Array     # [K] sum_i r_i^2


class _Pass(NamedTuple):
  """One pass over the features at (w, b): scores, objective, gradient, diagonal of H."""
  z: jax.Array        # [blocks, B, K] scores
  f: jax.Array        # [K] P(w, b)
  gw: jax.Array       # [K, d] gradient in w
  gb: jax.Array       # [K] gradient in b (0 without bias)
  mw: jax.Array       # [K, d] diag(H) in w: 1 + 2C sum_{i active} x_i^2
  mb: jax.Array       # [K] diag(H) in b


class _CGState(NamedTuple):
  """Preconditioned CG for (I + 2C X_A^T X_A) s = -g, every class at once."""
  sw: jax.Array       # [K, d] the step s
  sb: jax.Array       # [K]
  xs: jax.Array       # [blocks, B, K] X s, accumulated for the line search
  rw: jax.Array       # [K, d] residual r = -g - H s
  rb: jax.Array       # [K]
  pw: jax.Array       # [K, d] search direction
  pb: jax.Array       # [K]
  rz: jax.Array       # [K] r . M^-1 r
  q: jax.Array        # [K] the quadratic model at s
  run: jax.Array      # [K] bool, the class is still iterating
  k: jax.Array        # [K] int32 CG iterations


class _Bracket(NamedTuple):
  """The line search's step and its bracket [lo, hi] of the root of dP/dt."""
  t: jax.Array
  lo: jax.Array
  hi: jax.Array


class _NewtonState(NamedTuple):
  """The Newton iteration, every class at once (a finished class is frozen)."""
  w: jax.Array        # [K, d]
  b: jax.Array        # [K]
  grad: _Pass         # the pass at (w, b)
  res: jax.Array      # [K] the stopping quantity
  ok: jax.Array       # [K] bool, the stopping rule holds
  todo: jax.Array     # [K] bool, still iterating
  it: jax.Array       # [K] int32 Newton iterations
  cg: jax.Array       # [K] int32 total CG iterations


def _keep(mask, new, old):
  """`new` for the classes (leading axis) where `mask`, else `old`."""
  return jnp.where(mask.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)


def _norm(gw, gb):
  return jnp.sqrt(jnp.sum(gw * gw, 1) + gb * gb)


def _vdot(aw, ab, bw, bb):
  return jnp.sum(aw * bw, 1) + ab * bb


def _grad_pass(p: _Blocks, w, b) -> _Pass:
  """One pass: scores z, P, its gradient and diag(H), per class."""
  dtype = p.xb.dtype

  def body(acc, inp):
    xi, yi, vi = inp
    zi = _dot(xi, w.T) + b
    act = (yi * zi < 1) & vi
    ri = jnp.where(act, zi - yi, 0.0)
    af = act.astype(dtype)
    return _Sums(acc.gw + _dot(ri.T, xi), acc.mw + _dot(af.T, xi * xi), acc.gb + jnp.sum(ri, 0),
                 acc.mb + jnp.sum(af, 0), acc.loss + jnp.sum(ri * ri, 0)), zi

  zk = jnp.zeros((p.yb.shape[-1],), dtype)
  zkd = jnp.zeros((p.yb.shape[-1], p.xb.shape[-1]), dtype)
  acc, z = jax.lax.scan(body, _Sums(zkd, zkd, zk, zk, zk), (p.xb, p.yb, p.vmask))
  f = 0.5 * (jnp.sum(w * w, 1) + b * b) + p.c * acc.loss
  gw = w + 2 * p.c * acc.gw
  gb = p.bmask * (b + 2 * p.c * acc.gb)
  return _Pass(z, f, gw, gb, 1.0 + 2 * p.c * acc.mw, 1.0 + 2 * p.c * p.bmask * acc.mb)


def _hvp_pass(p: _Blocks, pw, pb, af):
  """One pass: H v [K, d], [K] (H = I + 2C X_A^T X_A per class) and X v [blocks, B, K]."""
  def body(acc, inp):
    xi, ai = inp
    xp = _dot(xi, pw.T) + p.bmask * pb
    axp = ai * xp
    hw, hb = acc
    return (hw + _dot(axp.T, xi), hb + jnp.sum(axp, 0)), xp
  (hw, hb), xp = jax.lax.scan(body, (jnp.zeros_like(pw), jnp.zeros_like(pb)), (p.xb, af))
  return pw + 2 * p.c * hw, p.bmask * (pb + 2 * p.c * hb), xp


def _precond(p: _Blocks, rw, rb, g: _Pass):
  """M^-1 r with M = (1 - mix) + mix * diag(H), diag(H) = 1 + 2C sum_{i in A} x_i^2."""
  return (rw / (1 - p.precond_mix + p.precond_mix * g.mw),
          p.bmask * rb / (1 - p.precond_mix + p.precond_mix * g.mb))


def _cg_step(p: _Blocks, s: _CGState, af, g: _Pass, gnorm, cgtol, *, max_cg, cg_rule,
             cg_eps) -> _CGState:
  """One CG iteration for the classes still running (the others keep their state)."""
  tiny = jnp.finfo(p.xb.dtype).tiny
  run = s.run
  hw, hb, xp = _hvp_pass(p, s.pw, s.pb, af)
  php = _vdot(s.pw, s.pb, hw, hb)
  run = run & (php > tiny)                     # LIBLINEAR: stop on dHd <= 1e-16
  a = jnp.where(run, s.rz / jnp.maximum(php, tiny), 0.0)
  sw, sb = s.sw + a[:, None] * s.pw, s.sb + a * s.pb
  rw, rb = s.rw - a[:, None] * hw, s.rb - a * hb
  zw, zb = _precond(p, rw, rb, g)
  rz = _vdot(rw, rb, zw, zb)
  beta = rz / jnp.maximum(s.rz, tiny)
  kk = s.k + run.astype(jnp.int32)
  if cg_rule == "quadratic":
    q = -0.5 * (_vdot(sw, sb, rw, rb) - _vdot(sw, sb, g.gw, g.gb))
    qdiff = q - s.q
    more = (q <= 0) & (qdiff <= 0) & (kk * qdiff < cgtol * q)
  else:
    q = s.q
    more = _norm(rw, rb) > cg_eps * gnorm
  keep = lambda new, old: _keep(run, new, old)
  return _CGState(sw=sw, sb=sb, xs=s.xs + a * xp, rw=keep(rw, s.rw), rb=keep(rb, s.rb),
                  pw=keep(zw + beta[:, None] * s.pw, s.pw), pb=keep(zb + beta * s.pb, s.pb),
                  rz=keep(rz, s.rz), q=keep(q, s.q), run=run & (kk < max_cg) & more, k=kk)


def _cg(p: _Blocks, af, g: _Pass, todo, *, max_cg, cg_rule, cg_eps):
  """Solves (I + 2C X_A^T X_A) s = -g by preconditioned CG; returns (sw, sb, X s, iterations)."""
  dtype = p.xb.dtype
  k = p.yb.shape[-1]
  gnorm = _norm(g.gw, g.gb)
  rw, rb = -g.gw, -g.gb
  zw, zb = _precond(p, rw, rb, g)
  rz = _vdot(rw, rb, zw, zb)
  cgtol = jnp.minimum(cg_eps, jnp.sqrt(jnp.sqrt(jnp.maximum(rz, 0.0))))
  init = _CGState(sw=jnp.zeros_like(g.gw), sb=jnp.zeros_like(g.gb), xs=jnp.zeros(af.shape, dtype),
                  rw=rw, rb=rb, pw=zw, pb=zb, rz=rz, q=jnp.zeros((k,), dtype),
                  run=todo & (gnorm > 0), k=jnp.zeros((k,), jnp.int32))
  step = lambda s: _cg_step(p, s, af, g, gnorm, cgtol, max_cg=max_cg, cg_rule=cg_rule,
                            cg_eps=cg_eps)
  s = jax.lax.while_loop(lambda s: jnp.any(s.run), step, init)
  return s.sw, s.sb, s.xs, s.k


def _line_search(p: _Blocks, w, b, z, sw, sb, xs, steps):
  """argmin_t P(w + t s, b + t sb) per class: safeguarded Newton on the monotone derivative;
  returns (t, lo), lo the largest step known to decrease P."""
  tiny = jnp.finfo(p.xb.dtype).tiny
  lin = jnp.sum(w * sw, 1) + b * sb
  quad = jnp.sum(sw * sw, 1) + sb * sb

  def dphi(t):
    zt = z + t * xs
    act = (p.yb * zt < 1) & p.vmask
    d1 = lin + t * quad + 2 * p.c * jnp.sum(jnp.where(act, (zt - p.yb) * xs, 0.0), (0, 1))
    d2 = quad + 2 * p.c * jnp.sum(jnp.where(act, xs * xs, 0.0), (0, 1))
    return d1, d2

  def body(_, br):
    d1, d2 = dphi(br.t)
    lo = jnp.where(d1 < 0, br.t, br.lo)
    hi = jnp.where(d1 >= 0, br.t, br.hi)
    tn = br.t - d1 / jnp.maximum(d2, tiny)
    inside = (tn > lo) & (tn < hi)
    bisect = jnp.where(jnp.isfinite(hi), 0.5 * (lo + hi), 2 * lo)
    return _Bracket(jnp.where(inside, tn, bisect), lo, hi)

  one = jnp.ones((p.yb.shape[-1],), p.xb.dtype)
  br = jax.lax.fori_loop(0, steps, body,
                         _Bracket(one, jnp.zeros_like(one), jnp.full_like(one, jnp.inf)))
  return br.t, br.lo


def _objective(p: _Blocks, w, b, z):
  h = jnp.where(p.vmask, jnp.maximum(1 - p.yb * z, 0.0), 0.0)
  return 0.5 * (jnp.sum(w * w, 1) + b * b) + p.c * jnp.sum(h * h, (0, 1))


def _gradient_scale(p: _Blocks, valid):
  """max(min(#pos, #neg), 1) / n * ||grad P(0)|| per class: residual = ||grad P|| / scale.

  At w = 0, b = 0 every margin is 0 < 1, so grad P(0) = -2C [X^T y, sum y]."""
  xty = jax.lax.scan(lambda acc, inp: (acc + _dot(inp[1].T, inp[0]), None),
                     jnp.zeros((p.yb.shape[-1], p.xb.shape[-1]), p.xb.dtype), (p.xb, p.yb))[0]
  gnorm0 = 2 * p.c * _norm(xty, p.bmask * jnp.sum(p.yb, (0, 1)))
  n = jnp.sum(valid).astype(p.xb.dtype)
  pos = jnp.sum(p.yb > 0, (0, 1)).astype(p.xb.dtype)
  return jnp.maximum(jnp.minimum(pos, n - pos), 1.0) / n * gnorm0


def _newton_step(p: _Blocks, s: _NewtonState, scale, eps, max_iter, *, line_search_steps,
                 **cg_options) -> _NewtonState:
  """CG direction, exact line search, and the pass at the new point; finished classes frozen."""
  dtype = p.xb.dtype
  tiny = jnp.finfo(dtype).tiny
  stall = 4 * jnp.finfo(dtype).eps
  w, b, z, todo = s.w, s.b, s.grad.z, s.todo
  af = ((p.yb * z < 1) & p.vmask).astype(dtype)
  sw, sb, xs, kcg = _cg(p, af, s.grad, todo, **cg_options)
  t, lo = _line_search(p, w, b, z, sw, sb, xs, line_search_steps)
  t = jnp.where(_objective(p, w + t[:, None] * sw, b + t * sb, z + t * xs) <= s.grad.f, t, lo)
  t = jnp.where(todo, t, 0.0)
  w, b = w + t[:, None] * sw, b + t * sb
  g = _grad_pass(p, w, b)                      # scores recomputed: no drift
  gn = _norm(g.gw, g.gb)
  res = jnp.where(gn <= 0, 0.0, gn / jnp.maximum(scale, tiny))
  ok = gn <= eps * scale
  actred = s.grad.f - g.f
  it = s.it + todo.astype(jnp.int32)
  done = ok | (t <= 0) | (actred <= stall * jnp.abs(g.f))
  keep = lambda new, old: _keep(todo, new, old)
  grad = g._replace(f=keep(g.f, s.grad.f), gw=keep(g.gw, s.grad.gw), gb=keep(g.gb, s.grad.gb))
  return _NewtonState(w=w, b=b, grad=grad, res=keep(res, s.res), ok=keep(ok, s.ok),
                      todo=todo & ~done & (it < max_iter), it=it, cg=s.cg + kcg)


def newton_squared_hinge(xb, valid, yb, w0, b0, *, c, fit_bias, eps, max_iter,
                         max_cg: int = 200, cg_rule: str = "quadratic", cg_eps: float = 0.5,
                         precond_mix: float = 0.01, line_search_steps: int = 12) -> BinaryResult:
  """Primal Newton-PCG for the squared-hinge SVM, all K classes at once (LIBLINEAR `-s 2`).

  Written batched over classes (columns) rather than vmapped so that every pass over the features
  is ONE `lax.scan` over row blocks doing both `X_b @ P` and `X_b^T (...)` while the block is in
  cache: a Newton iteration costs one pass (scores, gradient and the diagonal preconditioner), a
  CG iteration one pass (the Hessian-vector product), the exact line search no pass.

  Stopping rule (LIBLINEAR's `-s 2`, newton.cpp): class c stops when

      ||grad P_c(w)||_2 <= eps * max(min(#pos_c, #neg_c), 1) / n * ||grad P_c(0)||_2,

  i.e. when `residual = ||grad P_c(w)|| / (max(min(pos, neg), 1) / n * ||grad P_c(0)||) <= eps`
  (`converged`). It also stops, with `converged` False unless the rule holds, when max_iter is
  reached, when the line search finds no decrease, or when a step decreases P by <= 4 machine
  epsilons relative (LIBLINEAR: 1e-12 in float64; the float32 objective cannot resolve less).

  Args:
    xb: [blocks, B, d] features in row blocks (`to_blocks`).
    valid: [blocks, B] bool, False on padding rows.
    yb: [blocks, B, K] labels in {-1, +1} per class (anything on padding rows).
    w0: [K, d] initial weights (warm start; zeros for a cold start).
    b0: [K] initial biases.
    c: the SVM's C.
    fit_bias: whether b is a variable (bool or a traced 0/1; else b stays b0, which should be 0).
    eps: LIBLINEAR's `-e` for `-s 2` (LIBLINEAR's default 0.01), see above.
    max_iter: maximum Newton iterations.
    max_cg: maximum CG iterations per Newton iteration (LIBLINEAR: max(d, 5)).
    cg_rule: when CG stops (static). "quadratic" (default; LIBLINEAR >= 2.40's newton.cpp, Hsia
      et al. 2018): with Q_j = g.s_j + 0.5 s_j.H s_j the quadratic model at the j-th CG iterate,
      stop when j (Q_j - Q_{j-1}) >= min(cg_eps, sqrt(||g||_{M^-1})) Q_j. "residual" (TRON,
      LIBLINEAR < 2.40, this solver's former rule): ||H s + g|| <= cg_eps ||g||.
      The LIBLINEAR setting is the faster at the same objective (docs/results/svm.md). At
      eps = 1e-4 the quadratic rule's inexact steps stall more often in float32.
    cg_eps: the CG tolerance of `cg_rule` (LIBLINEAR's eps_cg = 0.5; 0.1 suits "residual").
    precond_mix: the preconditioner is M = (1 - precond_mix) + precond_mix * diag(H), diag(H) =
      1 + 2C sum_{i active} x_i^2; LIBLINEAR uses 0.01 (default), 1.0 is plain Jacobi.
    line_search_steps: safeguarded 1-D Newton steps of the exact line search. LIBLINEAR
      backtracks from step 1 (halving, Armijo test with eta = 0.01, at most 20 trials; one
      product X s per Newton step, then O(n) per trial); the exact minimiser on the line
      decreases P at least as much as any Armijo point and costs no pass over the features here
      (X s is accumulated during CG).

  Returns:
    `BinaryResult` with a leading class axis, alpha [K, n_padded].
  """
  if cg_rule not in ("quadratic", "residual"):
    raise InvjaxError(f"cg_rule must be 'quadratic' or 'residual', got {cg_rule!r}")
  dtype = xb.dtype
  k = yb.shape[-1]
  vmask = valid[..., None]
  p = _Blocks(xb=xb, yb=jnp.where(vmask, yb, 0.0).astype(dtype), vmask=vmask,
              c=jnp.asarray(c, dtype), bmask=jnp.asarray(fit_bias, dtype), precond_mix=precond_mix)
  eps = jnp.asarray(eps, dtype)
  tiny = jnp.finfo(dtype).tiny
  scale = _gradient_scale(p, valid)

  g = _grad_pass(p, w0, b0)
  gn = _norm(g.gw, g.gb)
  ok = gn <= eps * scale
  init = _NewtonState(w=w0, b=b0, grad=g, res=jnp.where(gn <= 0, 0.0, gn / jnp.maximum(scale, tiny)),
                      ok=ok, todo=~ok & (max_iter > 0), it=jnp.zeros((k,), jnp.int32),
                      cg=jnp.zeros((k,), jnp.int32))
  step = lambda s: _newton_step(p, s, scale, eps, max_iter, line_search_steps=line_search_steps,
                                max_cg=max_cg, cg_rule=cg_rule, cg_eps=cg_eps)
  s = jax.lax.while_loop(lambda s: jnp.any(s.todo), step, init)
  alpha = 2 * p.c * jnp.where(vmask, jnp.maximum(1 - p.yb * s.grad.z, 0.0), 0.0)
  alpha = alpha.reshape(-1, k).T
  return BinaryResult(w=s.w, b=s.b, alpha=alpha, iterations=s.it, inner_iterations=s.cg,
                      residual=s.res, converged=s.ok)
