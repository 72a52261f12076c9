"""Lipschitz lower bounds against numpy SVDs, upper bounds against measurements, certified radii."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src.checks import InvjaxError
from invjax.robust import lipschitz

D = 6


def _unit_spectral(rng, shape):
  w = rng.standard_normal(shape)
  return w / np.linalg.norm(w, 2)


def test_lower_bound_of_linear_map_is_its_largest_singular_value():
  rng = np.random.default_rng(0)
  w = rng.standard_normal((D + 2, D)).astype(np.float32)
  fn = lambda x: x @ w.T
  x = rng.standard_normal((3, D)).astype(np.float32)
  sigma = lipschitz.local_lipschitz(fn, x, key=jax.random.key(0), num_iters=100)
  np.testing.assert_allclose(sigma, np.linalg.svd(w, compute_uv=False)[0], rtol=1e-4)
  np.testing.assert_allclose(lipschitz.spectral_norm(w, key=jax.random.key(1), num_iters=200),
                             np.linalg.norm(w, 2), rtol=1e-4)


def test_local_bound_of_nonlinear_map_matches_dense_jacobian():
  rng = np.random.default_rng(1)
  w = rng.standard_normal((D, D)).astype(np.float32)
  fn = lambda x: jnp.tanh(x @ w.T) * 2.0  # per-example, NHWC-free
  x = rng.standard_normal((4, D)).astype(np.float32)
  sigma = np.asarray(lipschitz.local_lipschitz(fn, x, key=jax.random.key(0), num_iters=200))
  single = lambda v: fn(v[None])[0]
  ref = [np.linalg.svd(np.asarray(jax.jacfwd(single)(x[i])), compute_uv=False)[0]
         for i in range(4)]
  np.testing.assert_allclose(sigma, ref, rtol=2e-3)
  best, j = lipschitz.global_lipschitz_lower(fn, x, key=jax.random.key(0), num_iters=200,
                                             batch_size=3)
  assert j == int(np.argmax(ref))
  assert best == pytest.approx(max(ref), rel=2e-3)


def test_upper_bounds_dominate_measurements_of_residual_composition():
  """Blocks x + c * W2 tanh(W1 x) with ||W_i||_2 = 1 have Lip(g) <= c."""
  rng = np.random.default_rng(2)
  coeffs = [0.5, 0.7, 0.9]
  ws = [(_unit_spectral(rng, (D, D)), _unit_spectral(rng, (D, D))) for _ in coeffs]

  def fn(x):
    for c, (w1, w2) in zip(coeffs, ws):
      x = x + c * jnp.tanh(x @ w1.T) @ w2.T
    return x

  fwd, inv = lipschitz.iresnet_upper_bounds(coeffs)
  assert fwd == pytest.approx(np.prod([1 + c for c in coeffs]))
  assert inv == pytest.approx(np.prod([1 / (1 - c) for c in coeffs]))
  x = (3.0 * rng.standard_normal((8, D))).astype(np.float32)
  measured, _ = lipschitz.global_lipschitz_lower(fn, x, key=jax.random.key(0), num_iters=50)
  assert 1.0 < measured <= fwd
  # Lip(F^-1) at y = F(x) is 1 / sigma_min(J_F(x)).
  single = lambda v: fn(v[None])[0]
  for i in range(len(x)):
    s = np.linalg.svd(np.asarray(jax.jacfwd(single)(x[i])), compute_uv=False)
    assert s[0] <= fwd and 1.0 / s[-1] <= inv


def test_iresnet_bounds_dominate_measurement():
  iresnet = pytest.importorskip("invjax.flows.iresnet")
  model = iresnet.IResNet(stages=(2,), hidden=8, kind="dense", coeff=0.9, logdet="none",
                          kernel_sizes=(1, 1))
  rng = np.random.default_rng(3)
  x = rng.standard_normal((4, D)).astype(np.float32)
  variables = jax.jit(model.init)(jax.random.key(0), x)
  from invjax.flows.spectral_norm import converge_spectral_norms  # pylint: disable=g-import-not-at-top
  variables = converge_spectral_norms(model, variables, x, method="transform")
  fn = lambda v: model.apply(variables, v, method="transform")
  measured = np.asarray(lipschitz.local_lipschitz(fn, x, key=jax.random.key(1), num_iters=50))
  fwd, _ = model.lipschitz_bounds()
  assert np.all(measured <= fwd * (1 + 1e-4)) and np.all(measured > 0)


def test_certified_radius_is_sound_for_linear_classifier():
  rng = np.random.default_rng(4)
  w = rng.standard_normal((5, D)).astype(np.float32)  # logits = W x
  x = rng.standard_normal((20, D)).astype(np.float32)
  logits = x @ w.T
  y = np.argmax(logits, 1).astype(np.int32)
  y[:4] = (y[:4] + 1) % 5  # some misclassified: margin < 0, radius 0
  margin = np.asarray(lipschitz.logit_margin(logits, y))
  srt = np.sort(logits, 1)
  ref_margin = np.where(np.argmax(logits, 1) == y, srt[:, -1] - srt[:, -2],
                        logits[np.arange(20), y] - srt[:, -1])
  np.testing.assert_allclose(margin, ref_margin, rtol=1e-5, atol=1e-6)
  lip = float(np.linalg.norm(w, 2))
  radius = np.asarray(lipschitz.certified_radius(margin, lip))
  np.testing.assert_allclose(radius, np.maximum(margin, 0) / (np.sqrt(2) * lip), rtol=1e-5)
  # Exact l2 distance to the nearest decision boundary of a linear model.
  exact = np.array([min((logits[i, y[i]] - logits[i, j]) / np.linalg.norm(w[y[i]] - w[j])
                        for j in range(5) if j != y[i]) for i in range(20)])
  assert np.all(radius <= np.maximum(exact, 0) + 1e-5)
  assert np.all(radius[:4] == 0)
  acc = lipschitz.certified_accuracy(logits, y, lip, 0.0)
  assert acc == pytest.approx(np.mean(np.argmax(logits, 1) == y))


def test_bad_inputs():
  with pytest.raises(InvjaxError, match="c must lie in"):
    lipschitz.residual_block_bounds(1.0)
  with pytest.raises(InvjaxError, match="lipschitz_of_logits"):
    lipschitz.certified_radius(jnp.ones(3), -1.0)
  with pytest.raises(InvjaxError, match="NaN"):
    lipschitz.certified_radius(jnp.array([1.0, np.nan]), 1.0)
  with pytest.raises(InvjaxError, match="NaN"):
    lipschitz.local_lipschitz(lambda v: v, jnp.array([[np.nan, 1.0]]), key=jax.random.key(0))
  with pytest.raises(InvjaxError, match="bounds"):
    lipschitz.compose_upper([1.0, -2.0])
  with pytest.raises(InvjaxError, match="y must have shape"):
    lipschitz.logit_margin(jnp.ones((3, 4)), np.zeros(2, np.int32))
