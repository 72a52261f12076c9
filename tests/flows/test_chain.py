"""Tests for invjax.flows.chain.Chain composed of exact layers (dense Jacobian reference)."""
import jax
import numpy as np

from invjax.flows.actnorm import ActNorm
from invjax.flows.chain import Chain
from invjax.flows.conv1x1 import Conv1x1
from invjax.flows.coupling import AffineCoupling


def test_chain_composes_log_dets_and_inverts_in_reverse_order():
  model = Chain([ActNorm(), Conv1x1(), AffineCoupling(mask="checkerboard", hidden=8),
                 AffineCoupling(mask="checkerboard", flip=True, hidden=8)])
  x = np.random.RandomState(0).randn(3, 4).astype(np.float32)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  rng = np.random.RandomState(1)
  variables = jax.tree_util.tree_map(
      lambda s: (0.4 * rng.randn(*s.shape)).astype(s.dtype), shapes)

  @jax.jit
  def run(v, x):
    y, ld = model.apply(v, x)
    xr, ldi = model.apply(v, y, method="inverse")
    jac = jax.vmap(jax.jacfwd(lambda u: model.apply(v, u[None])[0][0]))(x)
    return y, ld, xr, ldi, jac

  y, ld, xr, ldi, jac = run(variables, x)
  assert ld.shape == (3,)
  for b in range(3):
    sign, ref = np.linalg.slogdet(np.asarray(jac[b], np.float64))
    assert sign != 0 and abs(ref) > 1e-2
    np.testing.assert_allclose(float(ld[b]), ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(xr), x, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ldi), -np.asarray(ld), rtol=1e-5)
  # Applying the layers by hand in order gives the same output (composition order).
  h = x
  for i, layer in enumerate(model.layers):
    h, _ = layer.apply({"params": variables["params"][f"layers_{i}"]}, h)
  np.testing.assert_allclose(np.asarray(y), np.asarray(h), rtol=1e-6, atol=1e-6)
