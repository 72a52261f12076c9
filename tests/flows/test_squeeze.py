"""Tests for invjax.flows.squeeze against an explicit index map and the dense Jacobian."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src.checks import InvjaxError
from invjax.flows.squeeze import Squeeze, squeeze2d, squeezed_shape, unsqueeze2d


def _reference_squeeze(x, f):
  """Loop over pixels: output channel (a*f + b)*C + c of block (i, j) holds x[f*i+a, f*j+b, c]."""
  b, h, w, c = x.shape
  out = np.zeros((b, h // f, w // f, c * f * f), x.dtype)
  for i in range(h):
    for j in range(w):
      a, bb = i % f, j % f
      out[:, i // f, j // f, (a * f + bb) * c:(a * f + bb + 1) * c] = x[:, i, j, :]
  return out


@pytest.mark.parametrize("factor", [2, 3])
def test_squeeze_matches_index_map_and_round_trips(factor):
  x = np.random.RandomState(0).randn(2, 6, 6, 3).astype(np.float32)
  y = squeeze2d(jnp.asarray(x), factor)
  np.testing.assert_array_equal(np.asarray(y), _reference_squeeze(x, factor))
  np.testing.assert_array_equal(np.asarray(unsqueeze2d(y, factor)), x)
  assert squeezed_shape((6, 6, 3), factor) == y.shape[1:]


def test_layer_log_det_zero_and_jacobian_is_a_permutation():
  layer = Squeeze()
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 2))
  variables = layer.init(jax.random.PRNGKey(1), x)
  y, ld = layer.apply(variables, x)
  assert y.shape == (2, 2, 2, 8)
  np.testing.assert_array_equal(np.asarray(ld), np.zeros(2))
  xr, ldi = layer.apply(variables, y, method="inverse")
  np.testing.assert_array_equal(np.asarray(xr), np.asarray(x))
  np.testing.assert_array_equal(np.asarray(ldi), np.zeros(2))
  # The map is linear: its Jacobian's columns are the images of the basis vectors.
  jac = np.asarray(layer.apply(variables, jnp.eye(32).reshape(32, 4, 4, 2))[0]).reshape(32, 32).T
  # A permutation matrix: one 1 per row and per column, |det| = 1.
  np.testing.assert_array_equal(jac.sum(0), np.ones(32))
  np.testing.assert_array_equal(jac.sum(1), np.ones(32))
  assert abs(np.linalg.slogdet(jac)[1]) < 1e-6


def test_bad_inputs_raise_invjax_error():
  layer = Squeeze()
  good = jnp.zeros((1, 4, 4, 2))
  variables = layer.init(jax.random.PRNGKey(0), good)
  with pytest.raises(InvjaxError, match="divisible"):
    layer.apply(variables, jnp.zeros((1, 5, 4, 2)))
  with pytest.raises(InvjaxError, match="rank 4"):
    layer.apply(variables, jnp.zeros((4, 4, 2)))
  with pytest.raises(InvjaxError, match="NaN"):
    layer.apply(variables, good.at[0, 1, 1, 0].set(jnp.nan))
  with pytest.raises(InvjaxError, match="floating"):
    layer.apply(variables, jnp.zeros((1, 4, 4, 2), jnp.int32))
  with pytest.raises(InvjaxError, match="divisible by factor"):
    layer.apply(variables, jnp.zeros((1, 2, 2, 3)), method="inverse")
