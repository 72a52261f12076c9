"""Log-det estimators: sample means vs dense-Jacobian references (jacfwd + slogdet / matrix powers).

Statistical tests use fixed seeds (deterministic) and many samples (vmap over keys):
means within 3 standard errors of the reference, gradients within 4 standard errors.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src import checks
from invjax.flows import logdet

D, H, BATCH = 4, 6, 3
N_KEYS = 2000


def _make_params(c, seed=0, psd=False):
  """`g(x) = tanh(x W1 + b1) W2` with `||W1|| = ||W2|| = sqrt(c)`, so Lip(g) <= c.

  With `psd`, `W2 = W1^T`: the Jacobian `W1 diag(tanh') W1^T` is positive semi-definite and the
  log-det far from zero (large truncation bias).
  """
  rng = np.random.default_rng(seed)
  w1, w2 = rng.normal(size=(D, H)), rng.normal(size=(H, D))
  if psd:
    w2 = w1.T
  w1 *= np.sqrt(c) / np.linalg.norm(w1, 2)
  w2 *= np.sqrt(c) / np.linalg.norm(w2, 2)
  b1 = rng.normal(size=(H,)) * 0.1
  return {k: jnp.asarray(v, jnp.float32) for k, v in dict(w1=w1, b1=b1, w2=w2).items()}


def g(params, x):
  return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"]


X = jnp.asarray(np.random.default_rng(1).normal(size=(BATCH, D)), jnp.float32)


def _jacobians(params, x):
  return jax.vmap(jax.jacfwd(lambda xi: g(params, xi[None])[0]))(x)    # [batch, D, D]


def _exact(params, x):
  return jax.vmap(lambda j: jnp.linalg.slogdet(jnp.eye(D) + j)[1])(_jacobians(params, x))


def _truncated(params, x, n):
  def one(j):
    jk, out = jnp.eye(D), 0.0
    for k in range(1, n + 1):
      jk = jk @ j
      out = out + (-1.0) ** (k + 1) / k * jnp.trace(jk)
    return out
  return jax.vmap(one)(_jacobians(params, x))


def _keys(n, seed=0):
  return jax.random.split(jax.random.key(seed, impl="rbg"), n)


def _assert_within(samples, ref, n_se):
  samples = np.asarray(samples, np.float64)
  mean = samples.mean(0)
  se = samples.std(0, ddof=1) / np.sqrt(samples.shape[0])
  err = np.abs(mean - np.asarray(ref, np.float64))
  assert np.all(err <= n_se * se + 1e-7), (mean, np.asarray(ref), se)
  return mean, se


@pytest.mark.parametrize("noise,neumann", [("gaussian", False), ("rademacher", True)])
def test_power_series_mean_matches_truncated_series(noise, neumann):
  params = _make_params(0.9, psd=True)
  est = jax.jit(jax.vmap(lambda k: logdet.power_series_logdet(
      g, params, X, k, n_terms=2, noise=noise, neumann_grad=neumann)))(_keys(N_KEYS))
  assert est.shape == (N_KEYS, BATCH)
  mean, se = _assert_within(est, _truncated(params, X, 2), 3)
  # the truncation bias at 2 terms is real, and the test would see it
  assert np.any(np.abs(mean - np.asarray(_exact(params, X))) > 5 * se)


def test_power_series_many_terms_matches_exact():
  params = _make_params(0.5)
  est = jax.jit(jax.vmap(lambda k: logdet.power_series_logdet(
      g, params, X, k, n_terms=20, n_samples=4)))(_keys(N_KEYS // 2, 1))
  assert logdet.truncation_bound(D, 0.5, 20) < 1e-6
  _assert_within(est, _exact(params, X), 3)


@pytest.mark.parametrize("distribution", ["poisson", "geometric"])
def test_russian_roulette_is_unbiased(distribution):
  params = _make_params(0.8, seed=2)
  keys = _keys(4 * N_KEYS, 2)
  fn = lambda k: logdet.russian_roulette_logdet(g, params, X, k, distribution=distribution,
                                                lam=2.0, p=0.3)
  est = jax.jit(jax.vmap(fn))(keys)
  _assert_within(est, _exact(params, X), 3)
  # the backprop path (masked scan) computes the same values as the while loop
  scan = jax.jit(jax.vmap(lambda k: logdet.russian_roulette_logdet(
      g, params, X, k, distribution=distribution, lam=2.0, p=0.3, neumann_grad=False)))(keys[:16])
  np.testing.assert_allclose(scan, est[:16], rtol=1e-4, atol=1e-5)


def test_neumann_gradient_matches_exact_gradient():
  params = _make_params(0.7, seed=3)
  ref = jax.grad(lambda p: _exact(p, X).sum())(params)

  def grad_one(k):
    return jax.grad(lambda p: logdet.russian_roulette_logdet(g, p, X, k, lam=2.0).sum())(params)

  grads = jax.jit(jax.vmap(grad_one))(_keys(N_KEYS, 3))
  for name in params:
    samples = np.asarray(grads[name], np.float64).reshape(N_KEYS, -1)
    _assert_within(samples, np.asarray(ref[name]).reshape(-1), 4)
  # and the value part is not differentiated twice: a single-key gradient is finite
  assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(grads))


def test_estimators_need_a_key_and_valid_settings():
  params = _make_params(0.5)
  with pytest.raises(checks.InvjaxError, match="PRNG key"):
    logdet.power_series_logdet(g, params, X, None)
  with pytest.raises(checks.InvjaxError, match="PRNG key"):
    logdet.russian_roulette_logdet(g, params, X, None)
  with pytest.raises(checks.InvjaxError, match="distribution"):
    logdet.russian_roulette_logdet(g, params, X, _keys(1)[0], distribution="uniform")
  with pytest.raises(checks.InvjaxError, match="max_dim"):
    logdet.exact_logdet(g, params, X, max_dim=3)


def test_roulette_tail_closed_forms():
  lam, p = 2.0, 0.3
  from math import exp, factorial
  for k in range(0, 8):
    pois = 1.0 - sum(exp(-lam) * lam ** i / factorial(i) for i in range(k))
    assert abs(float(logdet.roulette_tail(k, "poisson", lam, p)) - pois) < 1e-5
    assert abs(float(logdet.roulette_tail(k, "geometric", lam, p)) - (1 - p) ** k) < 1e-6
