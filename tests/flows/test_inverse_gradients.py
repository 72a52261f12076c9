"""Unrolled derivatives of a fixed-point inverse (`fixed_point_unrolled`, the i-ResNet
`inverse_transform(..., unroll=n)`) against closed forms and the implicit derivative."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src import checks
from invjax.flows import iresnet
from invjax.flows.fixed_point import fixed_point_implicit, fixed_point_unrolled
from invjax.flows.spectral_norm import converge_spectral_norms

D = 4
A = 0.5 * np.linalg.qr(np.random.default_rng(0).normal(size=(D, D)))[0]  # ||A|| = 0.5
B = np.random.default_rng(1).normal(size=(1, D)).astype(np.float32)


def _affine(b, x):
  return x @ jnp.asarray(A.T, jnp.float32) + b


@pytest.mark.parametrize("n", [0, 1, 3, 8])
def test_unrolled_iterate_and_jacobian_match_the_closed_form(n):
  x0 = jnp.zeros((1, D), jnp.float32)
  x, info = fixed_point_unrolled(lambda x: _affine(jnp.asarray(B), x), x0, num_iter=n)
  powers = [np.linalg.matrix_power(A, k) for k in range(n)]
  expected = sum((B[0] @ p.T for p in powers), np.zeros(D))  # x_n = sum_{k<n} A^k b
  np.testing.assert_allclose(np.asarray(x[0]), expected, atol=1e-5)
  assert int(info.iterations) == n
  np.testing.assert_allclose(float(info.residual[0]),
                             np.max(np.abs(expected @ A.T + B[0] - expected)), atol=1e-5)
  jac = jax.jacrev(lambda b: fixed_point_unrolled(lambda x: _affine(b, x), x0,
                                                  num_iter=n)[0][0])(jnp.asarray(B))[:, 0]
  np.testing.assert_allclose(np.asarray(jac), sum(powers, np.zeros((D, D))), atol=1e-5)


def test_unrolled_jacobian_tends_to_the_implicit_one():
  x0 = jnp.zeros((1, D), jnp.float32)
  implicit = jax.jacrev(lambda b: fixed_point_implicit(_affine, b, x0, tol=1e-7,
                                                       max_iter=200)[0][0])(jnp.asarray(B))[:, 0]
  np.testing.assert_allclose(np.asarray(implicit), np.linalg.inv(np.eye(D) - A), atol=1e-4)
  errors = []
  for n in (2, 8, 40):
    jac = jax.jacrev(lambda b: fixed_point_unrolled(lambda x: _affine(b, x), x0,
                                                    num_iter=n)[0][0])(jnp.asarray(B))[:, 0]
    errors.append(float(jnp.max(jnp.abs(jac - implicit))))
  assert errors[0] > 0.1 and errors[-1] < 1e-4, errors  # truncation error ~ ||A||^n
  assert errors == sorted(errors, reverse=True)


def test_unrolled_rejects_a_bad_iteration_count():
  for bad in (-1, 2.0, True):
    with pytest.raises(checks.InvjaxError, match="num_iter"):
      fixed_point_unrolled(lambda x: x, jnp.zeros((1, 2)), num_iter=bad)


def _iresnet():
  model = iresnet.IResNet(stages=(2,), kind="conv", hidden=8, activation="elu",
                          kernel_sizes=(3, 3), coeff=0.9, logdet="none", inverse_tol=1e-6,
                          inverse_max_iter=200)
  x = jax.random.uniform(jax.random.key(3), (2, 4, 4, 2))
  variables = model.init(jax.random.key(4), x, method="transform")
  # blow the kernels up so that every spectral normalisation binds: Lip(g) close to coeff^2
  variables = {**variables, "params": jax.tree_util.tree_map_with_path(
      lambda p, v: v * 5.0 if "kernel" in jax.tree_util.keystr(p) else v,
      variables["params"])}
  variables = converge_spectral_norms(model, variables, x, n_rounds=30, method="transform")
  return model, variables, x


def test_iresnet_unrolled_inverse_gradient_tends_to_the_implicit_one():
  model, variables, x = _iresnet()
  y = model.apply(variables, x, method="transform")
  w = jax.random.normal(jax.random.key(5), x.shape)

  def loss(yy, unroll):
    xx, _ = model.apply(variables, yy, method="inverse_transform", unroll=unroll)
    return jnp.sum(w * xx)

  x_imp, _ = model.apply(variables, y, method="inverse_transform")
  np.testing.assert_allclose(np.asarray(x_imp), np.asarray(x), atol=1e-5)
  g_imp = jax.grad(loss)(y, None)
  # the reference: w^T (dF/dx)^{-1} = solve of the transposed dense Jacobian of the forward map
  flat = lambda v: model.apply(variables, v.reshape(x.shape), method="transform").reshape(-1)
  jac = np.asarray(jax.jacfwd(flat)(x.reshape(-1)), np.float64)
  ref = np.linalg.solve(jac.T, np.asarray(w, np.float64).reshape(-1))
  np.testing.assert_allclose(np.asarray(g_imp).reshape(-1), ref, atol=1e-4)
  errors = {}
  for n in (1, 60):
    x_n, info = model.apply(variables, y, method="inverse_transform", unroll=n)
    assert all(int(i.iterations) == n for i in info)
    g_n = jax.grad(loss)(y, n)
    errors[n] = float(np.max(np.abs(np.asarray(g_n).reshape(-1) - ref)))
    if n == 60:
      np.testing.assert_allclose(np.asarray(x_n), np.asarray(x), atol=1e-5)
  assert errors[1] > 1e-2 and errors[60] < 1e-4, errors
  # zero iterations: the "inverse" is the identity, and so is its gradient
  g_0 = jax.grad(loss)(y, 0)
  np.testing.assert_allclose(np.asarray(g_0), np.asarray(w), atol=1e-6)
