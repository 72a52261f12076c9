"""Tests for invjax.flows.conv1x1: LU parametrisation, exact log-det, inverse, invertibility."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src.checks import InvjaxError
from invjax.flows.conv1x1 import Conv1x1
from tests.flows.helpers import check_log_det_and_inverse


def _random_lu(layer, x, seed, scale=1.0):
  """Every parameter drawn N(0, scale^2) (numpy): an arbitrary point of the LU space."""
  shapes = jax.eval_shape(layer.init, jax.random.PRNGKey(0), x)
  rng = np.random.RandomState(seed)
  return jax.tree_util.tree_map(lambda s: (scale * rng.randn(*s.shape)).astype(s.dtype), shapes)


def test_init_is_a_rotation():
  layer = Conv1x1()
  x = np.random.RandomState(0).randn(2, 8).astype(np.float32)
  variables = layer.init(jax.random.PRNGKey(1), x)
  w = np.asarray(layer.apply(variables, np.eye(8, dtype=np.float32))[0]).T  # Linear: W e_k.
  np.testing.assert_allclose(w @ w.T, np.eye(8), atol=1e-5)
  np.testing.assert_allclose(np.asarray(layer.apply(variables, 8, method="weight")), w, atol=1e-6)
  _, ld = layer.apply(variables, x)
  np.testing.assert_allclose(np.asarray(ld), 0.0, atol=1e-5)


def test_log_det_matches_dense_jacobian_and_round_trip():
  layer = Conv1x1()
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 3))
  variables = _random_lu(layer, x, seed=2, scale=0.5)
  check_log_det_and_inverse(layer, variables, x, log_det_atol=1e-4)


def test_stays_invertible_for_random_lu_parameters():
  layer = Conv1x1()
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8))

  @jax.jit
  def check(v):
    y, ld = layer.apply(v, x)
    xr, _ = layer.apply(v, y, method="inverse")
    w = jax.jacfwd(lambda u: layer.apply(v, u[None])[0][0])(x[0])
    return ld[0], w, xr, y

  for i in range(10):
    ld, w, xr, y = map(lambda a: np.asarray(a, np.float64), check(_random_lu(layer, x, seed=10 + i)))
    sign, logabs = np.linalg.slogdet(w)
    assert np.isfinite(ld) and sign != 0.0
    np.testing.assert_allclose(ld, logabs, rtol=1e-3, atol=1e-3)
    # Backward error of the inverse (the forward error may be large for ill-conditioned
    # random factors; the normwise backward error stays small, up to the growth |L||U|).
    back = np.linalg.norm(xr @ w.T - y) / (np.linalg.norm(w) * np.linalg.norm(xr))
    assert back < 1e-3, back


def test_bad_inputs_raise_invjax_error():
  layer = Conv1x1()
  variables = _random_lu(layer, jnp.ones((1, 2, 2, 3)), seed=0)
  with pytest.raises(InvjaxError, match="rank"):
    layer.apply(variables, jnp.ones((2, 2, 3)))
  with pytest.raises(InvjaxError, match="3 channels"):
    layer.apply(variables, jnp.ones((1, 2, 2, 4)))
  with pytest.raises(InvjaxError, match="NaN"):
    layer.apply(variables, jnp.full((1, 2, 2, 3), jnp.nan), method="inverse")
