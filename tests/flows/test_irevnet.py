"""Tests for invjax.flows.irevnet: bijectivity, |det J| = 1 (dense Jacobian), shapes, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src.checks import InvjaxError
from invjax.flows.irevnet import IRevNet, IRevNetBlock


def _random_variables(model, x, scale, seed=0):
  """Every parameter drawn N(0, scale^2) with numpy (F is not constrained at all)."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  rng = np.random.RandomState(seed)
  return jax.tree_util.tree_map(lambda s: (scale * rng.randn(*s.shape)).astype(s.dtype), shapes)


def test_round_trip_zero_log_det_and_unit_jacobian_determinant():
  model = IRevNet(num_blocks=(1, 1), hidden=4)
  x = np.random.RandomState(0).randn(2, 4, 4, 2).astype(np.float32)
  variables = _random_variables(model, x, 0.5)

  @jax.jit
  def run(v, x):
    z, ld = model.apply(v, x)
    xr, ldi = model.apply(v, z, method="inverse")
    jac = jax.jacfwd(lambda u: model.apply(v, u.reshape(1, 4, 4, 2))[0].reshape(-1))(
        x[0].reshape(-1))
    return z, ld, xr, ldi, jac

  z, ld, xr, ldi, jac = run(variables, x)
  assert z.shape == (2, 1, 1, 32)  # Initial squeeze 2x2x8, then a downsampling block.
  np.testing.assert_array_equal(np.asarray(ld), np.zeros(2))
  np.testing.assert_array_equal(np.asarray(ldi), np.zeros(2))
  np.testing.assert_allclose(np.asarray(xr), x, atol=1e-5)
  jac = np.asarray(jac, np.float64)
  sign, logabs = np.linalg.slogdet(jac)
  assert sign != 0
  np.testing.assert_allclose(logabs, 0.0, atol=1e-4)
  assert np.abs(jac - np.eye(32)[np.argmax(np.abs(jac), axis=1)]).max() > 1e-2  # Not a permutation.


def test_block_structure_y2_is_x1():
  block = IRevNetBlock(hidden=4)
  x = np.random.RandomState(1).randn(2, 2, 2, 4).astype(np.float32)
  variables = _random_variables(block, x, 0.5)
  y, ld = block.apply(variables, x)
  np.testing.assert_array_equal(np.asarray(y)[..., 2:], x[..., :2])
  xr, _ = block.apply(variables, y, method="inverse")
  np.testing.assert_allclose(np.asarray(xr), x, atol=1e-6)


def test_cifar_shape_keeps_the_number_of_dimensions():
  model = IRevNet(num_blocks=(2, 2, 2), hidden=8)
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  z, ld = jax.eval_shape(model.apply, variables, x)
  assert z.shape == (2, 4, 4, 192) and ld.shape == (2,)
  xr, _ = jax.eval_shape(lambda v, u: model.apply(v, u, method="inverse"), variables, z)
  assert xr.shape == (2, 32, 32, 3)


def test_bad_inputs_raise_invjax_error():
  model = IRevNet(num_blocks=(1, 1), hidden=4)
  x = np.zeros((1, 4, 4, 2), np.float32)
  variables = _random_variables(model, x, 0.1)
  with pytest.raises(InvjaxError, match="divisible by 2\\*\\*2"):
    model.apply(variables, np.zeros((1, 6, 6, 2), np.float32))
  with pytest.raises(InvjaxError, match="NaN"):
    model.apply(variables, np.full((1, 4, 4, 2), np.nan, np.float32))
  with pytest.raises(InvjaxError, match="rank 4"):
    model.apply(variables, np.zeros((4, 4, 2), np.float32))
  with pytest.raises(InvjaxError, match="even number of channels"):
    IRevNet(num_blocks=(1,), init_squeeze=False).init(
        jax.random.PRNGKey(0), np.zeros((1, 4, 4, 3), np.float32))
