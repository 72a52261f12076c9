"""Minimal-norm steps across half-spaces, checked against scipy's LP / QP solvers."""
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from invjax.attacks import latent_geometry

B, C, P = 4, 3, 5


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  rows = rng.standard_normal((B, C, P)).astype(np.float32)
  c = rng.uniform(0.1, 1.0, (B, C)).astype(np.float32)
  active = np.ones((B, C), bool)
  active[:, 1] = False  # ignored constraints
  return rows, c, active


def _min_norm_step(rows, c, active, **kwargs):
  return np.asarray(latent_geometry.min_norm_step(jnp.asarray(rows), jnp.asarray(c),
                                                  jnp.asarray(active), **kwargs))


def _linf_step(row, c):
  """min t s.t. |d_i| <= t, row . d >= c, by linprog over (d, t)."""
  obj = np.r_[np.zeros(P), 1.0]
  a_ub = np.vstack([np.c_[np.eye(P), -np.ones(P)], np.c_[-np.eye(P), -np.ones(P)],
                    np.r_[-row, 0.0][None]])
  b_ub = np.r_[np.zeros(2 * P), -c]
  sol = optimize.linprog(obj, A_ub=a_ub, b_ub=b_ub, bounds=[(None, None)] * (P + 1))
  assert sol.success, sol.message
  return sol.x[:P], sol.x[P]


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_any_is_the_cheapest_half_space(norm):
  rows, c, active = _problem()
  d = _min_norm_step(rows, c, active, combine="any", norm=norm, num_sweeps=0)
  for i in range(B):
    costs = []
    for j in np.flatnonzero(active[i]):
      if norm == "l2":
        costs.append(c[i, j] / np.linalg.norm(rows[i, j]))
      else:
        costs.append(_linf_step(rows[i, j].astype(np.float64), c[i, j])[1])
    size = np.linalg.norm(d[i]) if norm == "l2" else np.abs(d[i]).max()
    np.testing.assert_allclose(size, min(costs), rtol=1e-4)
    # It satisfies (at least) one active constraint.
    assert np.max(rows[i][active[i]] @ d[i] - c[i][active[i]]) >= -1e-5


def test_all_l2_is_the_qp_solution():
  rows, c, active = _problem(1)
  d = _min_norm_step(rows, c, active, combine="all", norm="l2", num_sweeps=500)
  for i in range(B):
    r, rhs = rows[i][active[i]].astype(np.float64), c[i][active[i]].astype(np.float64)
    sol = optimize.minimize(lambda v: np.sum(v ** 2), np.zeros(P), jac=lambda v: 2 * v,
                            constraints=[{"type": "ineq", "fun": lambda v: r @ v - rhs,
                                          "jac": lambda v: r}],
                            method="SLSQP", options=dict(ftol=1e-14, maxiter=1000))
    assert sol.success, sol.message
    np.testing.assert_allclose(d[i], sol.x, atol=1e-4)


def test_satisfied_constraints_need_no_step():
  rows, c, active = _problem(2)
  for combine in ("any", "all"):
    for norm in ("l2", "linf"):
      d = _min_norm_step(rows, -c, active, combine=combine, norm=norm, num_sweeps=50)
      np.testing.assert_array_equal(d, 0.0)
