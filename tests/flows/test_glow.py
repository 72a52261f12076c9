"""Tests for invjax.flows.glow / multiscale: round trips, exact log-det, latent layout, bpd."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from invjax._src.checks import InvjaxError
from invjax.flows.glow import Glow, RealNVP
from invjax.flows.multiscale import bits_per_dim, standard_normal_logpdf, uniform_dequantize

SHAPE = (4, 4, 2)


def _random_variables(model, x, scale, seed=0):
  """Every parameter drawn N(0, scale^2) with numpy: far from the identity init, no compiles."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  rng = np.random.RandomState(seed)
  return jax.tree_util.tree_map(lambda s: (scale * rng.randn(*s.shape)).astype(s.dtype), shapes)


MODELS = (
    ("glow", lambda: Glow(SHAPE, num_levels=2, num_steps=1, hidden=4)),
    ("realnvp", lambda: RealNVP(SHAPE, num_levels=2, hidden=4, num_checkerboard=1,
                                num_channel=2, num_final=2)),
)


def _setup(make, batch=2):
  model = make()
  x = np.random.RandomState(0).randn(batch, *SHAPE).astype(np.float32)
  return model, x, _random_variables(model, x, 0.1)


class GlowRoundTripTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_round_trip_after_perturbation(self):
    model, x, variables = _setup(MODELS[0][1])
    y, ld = self.variant(lambda v, u: model.apply(v, u))(variables, x)
    chex.assert_shape(y, (2, 32))
    chex.assert_shape(ld, (2,))
    xr, ldi = self.variant(lambda v, u: model.apply(v, u, method="inverse"))(variables, y)
    chex.assert_shape(xr, x.shape)
    np.testing.assert_allclose(np.asarray(xr), np.asarray(x), atol=1e-5)
    np.testing.assert_allclose(np.asarray(ldi), -np.asarray(ld), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,make", MODELS)
def test_log_det_log_prob_and_inverse_match_references(name, make):
  """log_det vs slogdet of the dense Jacobian; log_prob vs scipy; round trip (jitted)."""
  del name
  model, x, variables = _setup(make, batch=1)

  @jax.jit
  def run(v, x):
    y, ld = model.apply(v, x)
    xr, ldi = model.apply(v, y, method="inverse")
    jac = jax.jacfwd(lambda u: model.apply(v, u.reshape((1,) + SHAPE))[0][0])(x.reshape(-1))
    return y, ld, xr, ldi, jac, model.apply(v, x, method="log_prob")

  y, ld, xr, ldi, jac, log_p = run(variables, x)
  sign, ref = np.linalg.slogdet(np.asarray(jac, np.float64))
  assert sign != 0 and abs(ref) > 1e-2  # Non-trivial volume change.
  np.testing.assert_allclose(float(ld[0]), ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(float(ldi[0]), -ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(xr), x, atol=1e-5)
  ref_log_p = stats.norm.logpdf(np.asarray(y, np.float64)).sum() + ref
  np.testing.assert_allclose(float(log_p[0]), ref_log_p, rtol=1e-4)


def test_init_on_data_normalises_and_starts_volume_preserving_but_for_actnorm():
  """Real init: ActNorm normalises squeeze(x); Conv1x1 is a rotation; coupling is identity."""
  model = Glow(SHAPE, num_levels=1, num_steps=1, hidden=4)
  x = (0.5 + 3.0 * np.random.RandomState(2).randn(16, *SHAPE)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), x)
  y, ld = model.apply(variables, x)
  y = np.asarray(y).reshape(16, 2, 2, 8)
  np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
  # A rotation keeps the trace of the (unit) per-channel covariance: sum of variances = C.
  np.testing.assert_allclose(y.var(axis=(0, 1, 2)).sum(), 8.0, rtol=1e-4)
  sq = x.reshape(16, 2, 2, 2, 2, 2).transpose(0, 1, 3, 2, 4, 5).reshape(16, 2, 2, 8)
  ref = -4 * np.log(sq.std(axis=(0, 1, 2))).sum()
  np.testing.assert_allclose(np.asarray(ld), ref, rtol=1e-4)


def test_flat_latent_layout():
  """With no flow steps Glow is squeeze/split/squeeze: the layout is checked by hand."""
  model = Glow(SHAPE, num_levels=2, num_steps=0)
  x = np.random.RandomState(0).randn(2, *SHAPE).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), x)
  y, _ = model.apply(variables, x)

  def sq(a):  # Space-to-depth written with explicit indices, channel (a*2 + b)*C + c.
    b, h, w, c = a.shape
    out = np.zeros((b, h // 2, w // 2, 4 * c), a.dtype)
    for i in range(h):
      for j in range(w):
        k = (i % 2) * 2 + j % 2
        out[:, i // 2, j // 2, k * c:(k + 1) * c] = a[:, i, j]
    return out

  h1 = sq(x)  # [2, 2, 2, 8]
  z1 = h1[..., 4:]
  z2 = sq(h1[..., :4])  # [2, 1, 1, 16]
  np.testing.assert_array_equal(np.asarray(y), np.concatenate(
      [z1.reshape(2, -1), z2.reshape(2, -1)], axis=1))
  assert model.apply(variables, method="latent_shapes") == ((2, 2, 4), (1, 1, 16))


def test_standard_normal_logpdf_and_bits_per_dim_closed_forms():
  z = np.random.RandomState(1).randn(3, 2, 2, 2).astype(np.float32)
  np.testing.assert_allclose(np.asarray(standard_normal_logpdf(jnp.asarray(z))),
                             stats.norm.logpdf(z).reshape(3, -1).sum(1), rtol=1e-5)
  # Uniform density on [0, 1]^D (log p = 0) is exactly 8 bits/dim for 8-bit data.
  np.testing.assert_allclose(float(bits_per_dim(0.0, 3072)), 8.0, rtol=1e-6)
  # log p = -D log 2 on the [0,1] scale means one extra bit per dimension.
  np.testing.assert_allclose(float(bits_per_dim(-10 * np.log(2.0), 10)), 9.0, rtol=1e-6)
  x = uniform_dequantize(jax.random.PRNGKey(0), np.array([[0, 255]], np.uint8))
  assert 0.0 <= float(x[0, 0]) < 1 / 256 and 255 / 256 <= float(x[0, 1]) < 1.0


def test_bad_inputs_raise_invjax_error():
  model = Glow(SHAPE, num_levels=2, num_steps=1, hidden=4)
  x = jnp.zeros((1,) + SHAPE)
  variables = _random_variables(model, x, 0.1)
  with pytest.raises(InvjaxError, match="shape"):
    model.apply(variables, jnp.zeros((1, 4, 4, 3)))
  with pytest.raises(InvjaxError, match="NaN"):
    model.apply(variables, x.at[0, 0, 0, 0].set(jnp.nan))
  with pytest.raises(InvjaxError, match="shape"):
    model.apply(variables, jnp.zeros((1, 31)), method="inverse")
  with pytest.raises(InvjaxError, match="divisible"):
    Glow((6, 6, 2), num_levels=2, num_steps=1, hidden=4).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 6, 6, 2)))
  with pytest.raises(InvjaxError, match="coupling"):
    Glow(SHAPE, num_levels=1, num_steps=1, coupling="spline").init(jax.random.PRNGKey(0), x)
