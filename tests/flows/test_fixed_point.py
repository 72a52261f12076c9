"""Fixed-point iteration: checked against a linear solve (numpy) of the same contraction."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax import checks
from invjax.flows.fixed_point import FixedPointInfo, check_converged, fixed_point

RNG = np.random.default_rng(0)
A = RNG.normal(size=(3, 3))
A = (0.8 * A / np.linalg.norm(A, 2)).astype(np.float32)      # ||A||_2 = 0.8: a contraction
B = RNG.normal(size=(4, 3)).astype(np.float32)
X_STAR = np.linalg.solve(np.eye(3) - A.astype(np.float64), B.T.astype(np.float64)).T  # x = A x + b


def _f(x):
  return x @ jnp.asarray(A).T + jnp.asarray(B)


@pytest.mark.parametrize("jit", [False, True])
def test_converges_to_linear_solve(jit):
  solve = lambda b0: fixed_point(_f, b0, tol=1e-6, max_iter=200)
  x, info = (jax.jit(solve) if jit else solve)(jnp.asarray(B))
  np.testing.assert_allclose(x, X_STAR, atol=2e-5)
  assert info.residual.shape == (4,)
  assert float(info.residual.max()) <= 1e-6
  assert 10 < int(info.iterations) < 200
  assert check_converged(info, 1e-6) is info


def test_not_converged_reports_residual_and_raises(caplog):
  with caplog.at_level(logging.WARNING):
    x, info = fixed_point(_f, jnp.asarray(B), tol=1e-6, max_iter=2)
  assert int(info.iterations) == 2
  true_res = np.abs(np.asarray(_f(x)) - np.asarray(x)).max(axis=1)
  np.testing.assert_allclose(info.residual, true_res, rtol=1e-5)
  assert float(info.residual.max()) > 1e-2
  assert "max residual" in caplog.text
  with pytest.raises(checks.ConvergenceError, match=r"residual \d"):
    check_converged(info, 1e-6)


def test_nan_stops_and_fails():
  x, info = fixed_point(lambda z: z * jnp.nan, jnp.ones((2, 3)), max_iter=50)
  assert int(info.iterations) <= 1
  with pytest.raises(checks.ConvergenceError, match="did not converge"):
    check_converged(info)


def test_bad_inputs():
  with pytest.raises(checks.InvjaxError, match="same|shape"):
    fixed_point(lambda z: z[:, :2], jnp.ones((2, 3)))
  with pytest.raises(checks.InvjaxError, match="floating"):
    fixed_point(lambda z: z, jnp.ones((2, 3), jnp.int32))
  with pytest.raises(checks.InvjaxError, match="concrete"):
    jax.jit(lambda r: check_converged(FixedPointInfo(r, jnp.int32(1))))(jnp.ones(2))
