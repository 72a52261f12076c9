"""Tests for invjax.flows.actnorm: data-dependent init, exact log-det (dense Jacobian), inverse."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src.checks import InvjaxError
from invjax.flows.actnorm import ActNorm
from tests.flows.helpers import check_log_det_and_inverse


def _perturb(variables, key, scale=0.3):
  leaves, treedef = jax.tree_util.tree_flatten(variables)
  keys = jax.random.split(key, len(leaves))
  return jax.tree_util.tree_unflatten(
      treedef, [l + scale * jax.random.normal(k, l.shape, l.dtype) for l, k in zip(leaves, keys)])


def test_data_dependent_init_normalises_the_init_batch():
  x = 3.0 + 2.5 * jax.random.normal(jax.random.PRNGKey(0), (8, 4, 4, 3))
  x = x * jnp.array([1.0, 0.1, 7.0])
  layer = ActNorm()
  variables = layer.init(jax.random.PRNGKey(1), x)
  y, _ = layer.apply(variables, x)
  np.testing.assert_allclose(np.asarray(y).mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(y).std(axis=(0, 1, 2)), 1.0, atol=1e-4)
  # Initialising through `inverse` has no x: identity.
  v_inv = layer.init(jax.random.PRNGKey(1), x, method="inverse")
  np.testing.assert_array_equal(np.asarray(layer.apply(v_inv, x)[0]), np.asarray(x))


@pytest.mark.parametrize("shape", [(2, 4, 4, 2), (3, 5)])
def test_log_det_matches_dense_jacobian_and_inverse(shape):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  layer = ActNorm()
  variables = _perturb(layer.init(jax.random.PRNGKey(1), x), jax.random.PRNGKey(2))
  _, ld = check_log_det_and_inverse(layer, variables, x, log_det_atol=1e-5)
  assert ld.shape == (shape[0],)


def test_bad_inputs_raise_invjax_error():
  layer = ActNorm()
  x = jnp.ones((2, 4, 4, 3))
  variables = layer.init(jax.random.PRNGKey(0), np.random.RandomState(0).randn(2, 4, 4, 3))
  with pytest.raises(InvjaxError, match="rank"):
    layer.apply(variables, jnp.ones((4, 4, 3)))
  with pytest.raises(InvjaxError, match="NaN"):
    layer.apply(variables, x.at[0, 0, 0, 0].set(jnp.nan))
  with pytest.raises(InvjaxError, match="3 channels, got input with 2"):
    layer.apply(variables, jnp.ones((2, 4, 4, 2)))
