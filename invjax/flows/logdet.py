"""`log det(I + J_g(x))` for residual blocks `y = x + g(x)` with `Lip(g) < 1`: exact and estimates.

All functions take `g(params, x)`, a batch-first map that acts on each example
independently (`[batch, ...] -> [batch, ...]`, same shape), its `params` (any pytree) and
`x`, and return `[batch]`.

* `exact_logdet`: dense per-example Jacobian (`jax.jacfwd`) and `slogdet(I + J)`. Cost
  `d` forward-mode passes per example, `d^2` memory: small inputs only (`max_dim`).
* `power_series_logdet`: *estimate* of the truncated series (i-ResNet)
      log det(I + J) = sum_{k>=1} (-1)^{k+1} tr(J^k) / k,
  with Hutchinson's trace estimator `tr(J^k) ~ v^T J^k v` (Gaussian or Rademacher `v`),
  computed with vector-Jacobian products only. Biased by the truncation (at most
  `d * c^{n+1} / ((n+1)(1-c))` when `Lip(g) <= c`).
* `russian_roulette_logdet`: unbiased *estimate* of Residual Flows (Chen et al. 2019):
  `n = n_exact_terms + N` terms with `N ~ Poisson(lam)` or `Geometric(p)` (one draw per
  call, shared by the batch), term `k` reweighted by `1 / P(N >= k - n_exact_terms)`.

Gradients. With `neumann_grad=False` the estimate is differentiated as computed
(backprop through the series; for the Russian roulette the series is evaluated with a
masked `lax.scan` of `max_terms` steps). With `neumann_grad=True` the value is computed
without gradient (a `lax.while_loop` for the roulette) and the gradient comes from the
Neumann series of Residual Flows,
    d/dtheta log det(I + J) = tr((I + J)^{-1} dJ/dtheta)
                            ~ sum_{k=0}^{n-1} (-1)^k / P(N >= k + 1 - n_exact) v^T J^k (dJ/dtheta) v,
through the surrogate `stop_gradient(w)^T J v` (one extra vector-Jacobian product): memory
independent of the number of terms. Its expectation is the gradient of the estimator's
expectation (the exact log-det gradient for the roulette).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
import jax.scipy.special as jsp
import numpy as np

from invjax._src import checks

Array = jax.Array
GFn = Callable[[Any, Array], Array]

NOISES = ("gaussian", "rademacher")
DISTRIBUTIONS = ("poisson", "geometric")


def _event_dim(x) -> int:
  return int(np.prod(x.shape[1:]))


def _bdot(a: Array, b: Array) -> Array:
  """Per-example inner product of two `[batch, ...]` arrays -> `[batch]`."""
  return jnp.sum((a * b).reshape(a.shape[0], -1), axis=1)


def exact_logdet(g: GFn, params, x: Array, *, max_dim: int = 4096) -> Array:
  """Exact `log|det(I + J_g(x_i))|` per example from the dense Jacobian, `[batch]`.

  Args:
    g: `g(params, x)`, batch-first, examples independent.
    params: parameters of `g`.
    x: `[batch, ...]`.
    max_dim: refuse inputs whose per-example size `d` exceeds this (cost `O(d)` passes
      and `O(d^2)` memory per example).
  """
  d = _event_dim(x)
  if d > max_dim:
    raise checks.InvjaxError(
        f"exact log-det needs the dense {d}x{d} Jacobian per example (input shape "
        f"{tuple(x.shape[1:])}); that exceeds max_dim={max_dim}. Use logdet='power_series' or "
        "'russian_roulette' estimates, or raise max_dim for small inputs")
  event = x.shape[1:]

  def one(xi):
    f = lambda z: g(params, z.reshape((1,) + event)).reshape(-1)
    jac = jax.jacfwd(f)(xi.reshape(-1))
    return jnp.linalg.slogdet(jnp.eye(d, dtype=jac.dtype) + jac)[1]

  return lax.map(one, x)


def _probe(key: Array, shape, dtype, noise: str) -> Array:
  if noise == "gaussian":
    return jax.random.normal(key, shape, dtype)
  if noise == "rademacher":
    return jax.random.rademacher(key, shape, dtype)
  raise checks.InvjaxError(f"noise must be one of {NOISES}, got {noise!r}")


def _check_key(key, who: str) -> None:
  if key is None:
    raise checks.InvjaxError(
        f"{who} is a stochastic estimate and needs a PRNG key (in a flow module: "
        "model.apply(variables, x, rngs={'logdet': key}))")


def _tile(x: Array, n: int) -> Array:
  return x if n == 1 else jnp.concatenate([x] * n, axis=0)


def _untile_mean(v: Array, n: int) -> Array:
  return v if n == 1 else v.reshape(n, -1).mean(axis=0)


# A rolled scan of convolution VJPs runs slower on XLA:CPU than the same steps unrolled
# (convolutions in loops: see `invjax._src.conv`), so short series (the fixed power series) are
# unrolled; long ones (the masked 40-term roulette scan) stay loops to bound compile time.
_MAX_UNROLL = 10


def _unroll(n: int) -> int:
  return int(n) if int(n) <= _MAX_UNROLL else 1


def _series_scan(vjp_fn, v: Array, coefs: Array) -> Array:
  """`sum_k coefs[k-1] * v^T J^k v` for k = 1..len(coefs), per example, via VJPs."""
  def body(w, c):
    w = vjp_fn(w)
    return w, c * _bdot(w, v)
  _, terms = lax.scan(body, v, coefs, unroll=_unroll(coefs.shape[0]))
  return jnp.sum(terms, axis=0)


def _neumann_surrogate(g: GFn, params, x: Array, v: Array, w_sum: Array) -> Array:
  """`stop_grad(w_sum)^T J v`: its gradient is the Neumann-series log-det gradient."""
  _, vjp_fn = jax.vjp(lambda z: g(params, z), x)
  s = _bdot(vjp_fn(lax.stop_gradient(w_sum))[0], lax.stop_gradient(v))
  return s - lax.stop_gradient(s)


def power_series_logdet(g: GFn, params, x: Array, key: Array, *, n_terms: int = 5,
                        n_samples: int = 1, noise: str = "gaussian",
                        neumann_grad: bool = False) -> Array:
  """Hutchinson estimate of the `n_terms`-term power series of `log det(I + J_g)`, `[batch]`.

  Unbiased for the truncated series `sum_{k=1}^{n} (-1)^{k+1} tr(J^k)/k`, which differs
  from the log-det by the truncation bias.

  Args:
    g, params, x: as in `exact_logdet`.
    key: PRNG key for the probe vectors.
    n_terms: number of series terms (>= 1).
    n_samples: probe vectors averaged per example.
    noise: `"gaussian"` or `"rademacher"` probes.
    neumann_grad: memory-efficient Neumann-series gradient (see module docstring).
  """
  _check_key(key, "power_series_logdet")
  if int(n_terms) < 1 or int(n_samples) < 1:
    raise checks.InvjaxError(
        f"n_terms and n_samples must be >= 1, got {n_terms} and {n_samples}")
  batch = x.shape[0]
  xs = _tile(x, n_samples)
  v = _probe(key, xs.shape, xs.dtype, noise)
  ks = np.arange(1, n_terms + 1)
  coefs = jnp.asarray((-1.0) ** (ks + 1) / ks, xs.dtype)
  if not neumann_grad:
    _, vjp_fn = jax.vjp(lambda z: g(params, z), xs)
    est = _series_scan(lambda w: vjp_fn(w)[0], v, coefs)
    return _untile_mean(est, n_samples).reshape(batch)
  params_c, xs_c = lax.stop_gradient((params, xs))
  _, vjp_c = jax.vjp(lambda z: g(params_c, z), xs_c)
  neumann = jnp.asarray((-1.0) ** (ks - 1), xs.dtype)    # weight of (J^T)^{k-1} v

  def body(carry, cd):
    w, w_sum = carry
    c, dk = cd
    w_sum = w_sum + dk * w
    w = vjp_c(w)[0]
    return (w, w_sum), c * _bdot(w, v)

  (_, w_sum), terms = lax.scan(body, (v, jnp.zeros_like(v)), (coefs, neumann),
                               unroll=_unroll(n_terms))
  est = jnp.sum(terms, axis=0) + _neumann_surrogate(g, params, xs, v, w_sum)
  return _untile_mean(est, n_samples).reshape(batch)


def roulette_tail(k: Array, distribution: str, lam: float, p: float) -> Array:
  """`P(N >= k)` for `N ~ Poisson(lam)` or `N ~ Geometric(p)` on {0, 1, ...}; 1 for k <= 0."""
  k = jnp.asarray(k)
  kf = jnp.maximum(k, 1).astype(jnp.float32)
  if distribution == "poisson":
    tail = jsp.gammainc(kf, jnp.float32(lam))      # P(Poisson(lam) >= k) = P(k, lam)
  elif distribution == "geometric":
    tail = (1.0 - jnp.float32(p)) ** kf
  else:
    raise checks.InvjaxError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
  return jnp.where(k <= 0, 1.0, tail)


def _sample_n(key: Array, distribution: str, lam: float, p: float, max_n: int) -> Array:
  """`N` by inversion, `N = #{j in 1..max_n : U < P(N >= j)}` (any PRNG implementation)."""
  u = jax.random.uniform(key, (), jnp.float32)
  tails = roulette_tail(jnp.arange(1, max_n + 1), distribution, lam, p)
  return jnp.sum(u < tails).astype(jnp.int32)


def russian_roulette_logdet(g: GFn, params, x: Array, key: Array, *, n_exact_terms: int = 2,
                            distribution: str = "poisson", lam: float = 2.0, p: float = 0.5,
                            n_samples: int = 1, noise: str = "gaussian",
                            neumann_grad: bool = True, max_terms: int = 40) -> Array:
  """Unbiased Russian-roulette estimate of `log det(I + J_g(x))` (Residual Flows), `[batch]`.

  Draws `N` (one per call) and sums `n = min(n_exact_terms + N, max_terms)` series terms,
  term `k` weighted by `1 / P(N >= k - n_exact_terms)`; with Hutchinson probes. Unbiased
  up to the `max_terms` cap (probability `P(N > max_terms - n_exact_terms)`, about 1e-23
  for the Poisson(2) default).

  Args:
    g, params, x: as in `exact_logdet`.
    key: PRNG key (probes and `N`).
    n_exact_terms: terms always computed (weight 1).
    distribution: `"poisson"` (rate `lam`) or `"geometric"` (success probability `p`,
      `P(N >= k) = (1 - p)^k`).
    n_samples: probe vectors averaged per example (one `N` for all).
    noise: `"gaussian"` or `"rademacher"`.
    neumann_grad: memory-efficient Neumann-series gradient (default, as Residual Flows);
      otherwise backprop through a masked scan of `max_terms` steps.
    max_terms: cap on the number of terms.
  """
  _check_key(key, "russian_roulette_logdet")
  if int(n_exact_terms) < 0 or int(n_samples) < 1 or int(max_terms) < max(1, n_exact_terms):
    raise checks.InvjaxError(
        f"need n_exact_terms >= 0, n_samples >= 1 and max_terms >= max(1, n_exact_terms); got "
        f"{n_exact_terms}, {n_samples}, {max_terms}")
  if distribution == "poisson":
    checks.check_positive(lam, "lam")
  elif distribution == "geometric":
    checks.check_in_open_interval(p, 0.0, 1.0, "p")
  else:
    raise checks.InvjaxError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
  batch = x.shape[0]
  k_probe, k_n = jax.random.split(key)
  xs = _tile(x, n_samples)
  v = _probe(k_probe, xs.shape, xs.dtype, noise)
  n_terms = jnp.minimum(n_exact_terms + _sample_n(k_n, distribution, lam, p, max_terms), max_terms)
  n_terms = jnp.maximum(n_terms, 1)

  def weight(k):   # 1 / P(N >= k - n_exact), k >= 1
    return (1.0 / roulette_tail(k - n_exact_terms, distribution, lam, p)).astype(xs.dtype)

  def coef(k):     # (-1)^{k+1} / k / P(N >= k - n_exact)
    sign = jnp.where(k % 2 == 1, 1.0, -1.0).astype(xs.dtype)
    return sign / k.astype(xs.dtype) * weight(k)

  if not neumann_grad:
    ks = jnp.arange(1, max_terms + 1)
    coefs = jnp.where(ks <= n_terms, coef(ks), 0.0)
    _, vjp_fn = jax.vjp(lambda z: g(params, z), xs)
    est = _series_scan(lambda w: vjp_fn(w)[0], v, coefs)
    return _untile_mean(est, n_samples).reshape(batch)

  params_c, xs_c = lax.stop_gradient((params, xs))
  _, vjp_c = jax.vjp(lambda z: g(params_c, z), xs_c)

  def cond(state):
    return state[0] < n_terms

  def body(state):
    k, w, w_sum, acc = state
    k = k + 1
    w_sum = w_sum + (k * coef(k)) * w       # (-1)^{k-1} / P(N >= k - n_exact) (J^T)^{k-1} v
    w = vjp_c(w)[0]
    acc = acc + coef(k) * _bdot(w, v)
    return k, w, w_sum, acc

  init = (jnp.zeros((), jnp.int32), v, jnp.zeros_like(v), jnp.zeros((xs.shape[0],), xs.dtype))
  _, _, w_sum, acc = lax.while_loop(cond, body, init)
  est = acc + _neumann_surrogate(g, params, xs, v, w_sum)
  return _untile_mean(est, n_samples).reshape(batch)


def truncation_bound(dim: int, lipschitz: float, n_terms: int) -> float:
  """Upper bound `d * c^{n+1} / ((n+1)(1-c))` on the power-series truncation error."""
  c = float(lipschitz)
  return float(dim) * c ** (n_terms + 1) / ((n_terms + 1) * (1.0 - c))
