"""Fixed-point iteration: checked against a linear solve (numpy) of the same contraction."""
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src import checks
from invjax.flows.fixed_point import (ConvergenceWarning, FixedPointInfo, check_converged,
                                      fixed_point)
from tests.flows.helpers import convergence_warnings

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


def test_jitted_unconverged_iteration_warns_with_its_residual():
  solve = jax.jit(lambda b0, n: fixed_point(_f, b0, tol=1e-6, max_iter=n))
  with pytest.warns(ConvergenceWarning, match=r"after 2 iterations .* tol 1e-06") as rec:
    x, _ = solve(jnp.asarray(B), 2)
    jax.effects_barrier()
  (warning,) = [w for w in rec if issubclass(w.category, ConvergenceWarning)]
  reported = float(re.search(r"max residual (\S+) >", str(warning.message)).group(1))
  true_res = np.abs(np.asarray(_f(x), np.float64) - np.asarray(x, np.float64)).max()  # numpy
  assert true_res > 1e-2
  np.testing.assert_allclose(reported, true_res, rtol=2e-3)    # printed with 3 digits
  # converged: no warning; warn=False: none either, though it stops after 2 iterations
  assert not convergence_warnings(lambda: solve(jnp.asarray(B), 200))
  quiet = jax.jit(lambda b0: fixed_point(_f, b0, tol=1e-6, max_iter=2, warn=False))
  assert not convergence_warnings(lambda: quiet(jnp.asarray(B)))
  # eagerly the same warning (next to the logged message)
  assert len(convergence_warnings(lambda: fixed_point(_f, jnp.asarray(B), max_iter=2))) == 1


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


# ---------------------------------------------------------------- implicit differentiation

from invjax.flows.fixed_point import fixed_point_implicit  # pylint: disable=g-import-not-at-top


def _f_params(params, x):
  a, b = params
  return x @ a.T + b


def _solve_implicit(a, b):
  x, _ = fixed_point_implicit(_f_params, (a, b), b, tol=1e-7, max_iter=500, grad_tol=1e-7)
  return x


def test_implicit_value_and_info_match_fixed_point():
  x, info = fixed_point_implicit(_f_params, (jnp.asarray(A), jnp.asarray(B)), jnp.asarray(B),
                                 tol=1e-6, max_iter=200)
  x_ref, info_ref = fixed_point(_f, jnp.asarray(B), tol=1e-6, max_iter=200)
  np.testing.assert_array_equal(x, x_ref)
  np.testing.assert_array_equal(info.residual, info_ref.residual)


@pytest.mark.parametrize("mode", ["rev", "fwd"])
def test_implicit_jacobian_in_rhs_is_the_linear_solve(mode):
  # x*(b) = (I - A)^{-1} b for every example: d x*_0 / d b_0 = (I - A)^{-1} (numpy).
  jac_fn = jax.jacrev if mode == "rev" else jax.jacfwd
  jac = jac_fn(lambda b0: _solve_implicit(jnp.asarray(A), b0[None])[0])(jnp.asarray(B[0]))
  ref = np.linalg.inv(np.eye(3) - A.astype(np.float64))
  np.testing.assert_allclose(jac, ref, atol=1e-4)


def test_implicit_gradient_in_weights_matches_closed_form():
  # L = sum_i c_i . x*_i; dL/dA = sum_i w_i x*_i^T with w_i = (I - A)^{-T} c_i.
  c = RNG.normal(size=B.shape).astype(np.float32)
  loss = lambda a: jnp.sum(jnp.asarray(c) * _solve_implicit(a, jnp.asarray(B)))
  grad = jax.jit(jax.grad(loss))(jnp.asarray(A))
  w = np.linalg.solve((np.eye(3) - A.astype(np.float64)).T, c.T.astype(np.float64)).T
  ref = w.T @ X_STAR
  np.testing.assert_allclose(grad, ref, atol=1e-4)
  # linearize + linear_transpose (what the Jacobian-aware latent attack uses) agrees too.
  _, lin = jax.linearize(lambda b: _solve_implicit(jnp.asarray(A), b), jnp.asarray(B))
  ct = jax.linear_transpose(lin, jnp.asarray(B))(jnp.asarray(c))[0]
  np.testing.assert_allclose(ct, w, atol=1e-4)
