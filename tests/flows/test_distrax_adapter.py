"""Tests for invjax.flows.distrax_adapter: Transformed log_prob vs change of variables by hand."""
import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from invjax._src.checks import InvjaxError
from invjax.flows.distrax_adapter import to_distrax
from invjax.flows.glow import Glow
from invjax.flows.irevnet import IRevNet

SHAPE = (4, 4, 2)


def _random_variables(model, x, scale, seed=0):
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  rng = np.random.RandomState(seed)
  return jax.tree_util.tree_map(lambda s: (scale * rng.randn(*s.shape)).astype(s.dtype), shapes)


@pytest.fixture(scope="module")
def glow():
  model = Glow(SHAPE, num_levels=2, num_steps=1, hidden=4)
  x = np.random.RandomState(0).randn(2, *SHAPE).astype(np.float32)
  return model, _random_variables(model, x, 0.1), x


def test_transformed_log_prob_is_the_change_of_variables(glow):
  model, variables, x = glow
  bij = to_distrax(model, variables)
  assert (bij.event_ndims_in, bij.event_ndims_out) == (1, 3)
  base = distrax.MultivariateNormalDiag(jnp.zeros(32), jnp.ones(32))

  @jax.jit
  def run(b, x):
    dist = distrax.Transformed(base, b)
    # Reference: f = the flow (data -> latent) and its dense Jacobian, per example.
    f = lambda u: model.apply(variables, u.reshape((1,) + SHAPE))[0][0]
    jac = jax.vmap(jax.jacfwd(f))(x.reshape(2, -1))
    # An unbatched event and two batch dims must give the same numbers.
    return (dist.log_prob(x), jax.vmap(f)(x.reshape(2, -1)), jac, dist.log_prob(x[1]),
            dist.log_prob(x[None]))

  log_p, z, jac, log_p1, log_p_none = run(bij, x)  # The bijector is a pytree: enters jit.
  assert log_p.shape == (2,) and log_p1.shape == () and log_p_none.shape == (1, 2)
  for b in range(2):
    _, logabs = np.linalg.slogdet(np.asarray(jac[b], np.float64))
    ref = stats.norm.logpdf(np.asarray(z[b], np.float64)).sum() + logabs
    np.testing.assert_allclose(float(log_p[b]), ref, rtol=1e-4)
  np.testing.assert_allclose(float(log_p1), float(log_p[1]), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(log_p_none)[0], np.asarray(log_p), rtol=1e-5)


def test_sampling_and_normalizing_direction(glow):
  model, variables, _ = glow
  base = distrax.MultivariateNormalDiag(jnp.zeros(32), jnp.ones(32))
  gen, norm = to_distrax(model, variables), to_distrax(model, variables, direction="normalizing")
  assert (norm.event_ndims_in, norm.event_ndims_out) == (3, 1)
  assert distrax.Transformed(base, gen).event_shape == SHAPE

  @jax.jit
  def run(gen, norm, key):
    dist = distrax.Transformed(base, gen)
    samples, log_p = dist.sample_and_log_prob(seed=key, sample_shape=(3,))
    z, ld = norm.forward_and_log_det(samples)
    z_ref, ld_ref = model.apply(variables, samples)
    return samples, log_p, dist.log_prob(samples), z, ld, z_ref, ld_ref

  samples, log_p, log_p_again, z, ld, z_ref, ld_ref = run(gen, norm, jax.random.PRNGKey(0))
  assert samples.shape == (3,) + SHAPE and np.all(np.isfinite(np.asarray(samples)))
  np.testing.assert_allclose(np.asarray(log_p_again), np.asarray(log_p), rtol=1e-4, atol=1e-4)
  # Normalizing direction: forward is data -> latent, the same map as the model.
  np.testing.assert_allclose(np.asarray(z), np.asarray(z_ref), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ld), np.asarray(ld_ref), rtol=1e-5, atol=1e-5)


def test_irevnet_needs_data_shape_and_bad_arguments():
  model = IRevNet(num_blocks=(1,), hidden=4)
  x = np.zeros((1,) + SHAPE, np.float32)
  variables = _random_variables(model, x, 0.1)
  with pytest.raises(InvjaxError, match="data_shape"):
    to_distrax(model, variables)
  bij = to_distrax(model, variables, data_shape=SHAPE)
  assert (bij.event_ndims_in, bij.event_ndims_out) == (3, 3) and bij.latent_shape == (2, 2, 8)
  with pytest.raises(InvjaxError, match="direction"):
    to_distrax(model, variables, data_shape=SHAPE, direction="sideways")
  with pytest.raises(InvjaxError, match="batch_shape"):
    bij.forward(jnp.zeros((2, 3)))
