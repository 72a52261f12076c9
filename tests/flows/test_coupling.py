"""Tests for invjax.flows.coupling: round trips (jit / no jit), exact log-dets, masks, errors."""
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src.checks import InvjaxError
from invjax.flows.coupling import AdditiveCoupling, AffineCoupling, make_mask


def _random_variables(model, x, scale, seed=0):
  """Every parameter drawn N(0, scale^2) with numpy: far from the identity init, no compiles."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  rng = np.random.RandomState(seed)
  return jax.tree_util.tree_map(lambda s: (scale * rng.randn(*s.shape)).astype(s.dtype), shapes)


# (layer class, mask, flip, input shape, scale_fn)
CASES = (
    ("affine_checker_img", AffineCoupling, "checkerboard", False, (2, 4, 4, 2), "tanh_exp"),
    ("additive_channel_img_flip", AdditiveCoupling, "channel", True, (2, 4, 4, 3), None),
    ("affine_dense_half", AffineCoupling, "channel", False, (3, 5), "tanh_exp"),
)
JACOBIAN_CASES = CASES + (
    ("affine_channel_img_flip", AffineCoupling, "channel", True, (2, 4, 4, 3), "sigmoid"),
    ("additive_dense_alternate", AdditiveCoupling, "checkerboard", False, (2, 6), None),
)


def _make(cls, mask, flip, scale_fn):
  kwargs = dict(mask=mask, flip=flip, hidden=8)
  if scale_fn is not None:
    kwargs["scale_fn"] = scale_fn
  return cls(**kwargs)


class CouplingTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*CASES)
  def test_round_trip_after_perturbation(self, cls, mask, flip, shape, scale_fn):
    layer = _make(cls, mask, flip, scale_fn)
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    variables = _random_variables(layer, x, 0.3)
    fwd = self.variant(lambda v, u: layer.apply(v, u))
    inv = self.variant(lambda v, u: layer.apply(v, u, method="inverse"))
    y, ld = fwd(variables, x)
    chex.assert_shape(ld, (shape[0],))
    assert float(jnp.max(jnp.abs(y - x))) > 1e-2  # Not the identity after the perturbation.
    xr, ldi = inv(variables, y)
    np.testing.assert_allclose(np.asarray(xr), np.asarray(x), atol=1e-5)
    np.testing.assert_allclose(np.asarray(ldi), -np.asarray(ld), rtol=1e-5, atol=1e-6)
    # The conditioning part passes through unchanged.
    m = np.broadcast_to(make_mask(shape[1:], mask, flip), shape[1:]).astype(bool)
    np.testing.assert_array_equal(np.asarray(y)[:, m], np.asarray(x)[:, m])


@pytest.mark.parametrize("name,cls,mask,flip,shape,scale_fn", JACOBIAN_CASES)
def test_log_det_matches_dense_jacobian(name, cls, mask, flip, shape, scale_fn):
  del name
  layer = _make(cls, mask, flip, scale_fn)
  x = np.random.RandomState(3).randn(*shape).astype(np.float32)
  variables = _random_variables(layer, x, 0.4, seed=1)
  event = shape[1:]

  @jax.jit
  def log_det_and_jacobians(v, x):
    jac = jax.vmap(jax.jacfwd(lambda u: layer.apply(v, u.reshape((1,) + event))[0].reshape(-1)))
    return layer.apply(v, x)[1], jac(x.reshape(x.shape[0], -1))

  ld, jacs = log_det_and_jacobians(variables, x)
  for b in range(shape[0]):
    sign, ref = np.linalg.slogdet(np.asarray(jacs[b], np.float64))
    assert sign != 0
    np.testing.assert_allclose(float(ld[b]), ref, rtol=1e-4, atol=1e-5)
  if cls is AffineCoupling:
    assert np.all(np.abs(np.asarray(ld)) > 1e-3)  # Non-trivial scale after the perturbation.


def test_masks_are_explicit_patterns():
  m = make_mask((2, 2, 3), "checkerboard")
  np.testing.assert_array_equal(m[..., 0], [[1, 0], [0, 1]])
  np.testing.assert_array_equal(make_mask((2, 2, 4), "channel", flip=True)[0, 0], [0, 0, 1, 1])
  np.testing.assert_array_equal(make_mask((5,), "checkerboard"), [1, 0, 1, 0, 1])
  np.testing.assert_array_equal(make_mask((5,), "channel"), [1, 1, 0, 0, 0])


def test_identity_at_init_with_tanh_exp():
  layer = AffineCoupling(mask="checkerboard", hidden=4)
  x = np.random.RandomState(0).randn(2, 2, 2, 8).astype(np.float32)
  y, ld = layer.apply(layer.init(jax.random.PRNGKey(1), x), x)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
  np.testing.assert_array_equal(np.asarray(ld), np.zeros(2))


def test_bad_inputs_raise_invjax_error():
  x = jnp.ones((1, 4, 4, 2))
  layer = AffineCoupling(mask="checkerboard", hidden=4)
  variables = _random_variables(layer, x, 0.1)
  with pytest.raises(InvjaxError, match="rank"):
    layer.apply(variables, jnp.ones((4, 4, 2)))
  with pytest.raises(InvjaxError, match="NaN"):
    layer.apply(variables, x.at[0, 0, 0, 0].set(jnp.inf), method="inverse")
  with pytest.raises(InvjaxError, match="mask"):
    AffineCoupling(mask="stripes").init(jax.random.PRNGKey(0), x)
  with pytest.raises(InvjaxError, match="scale_fn"):
    AffineCoupling(scale_fn="softplus").init(jax.random.PRNGKey(0), x)
  with pytest.raises(InvjaxError, match="at least 2"):
    AdditiveCoupling(mask="channel").init(jax.random.PRNGKey(0), jnp.ones((1, 4, 4, 1)))
