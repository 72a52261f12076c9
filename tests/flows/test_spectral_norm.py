"""Spectral normalisation: checked against the SVD of the layer's dense Jacobian (jacfwd)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src import checks
from invjax.flows.spectral_norm import (SpectralConv, SpectralDense, check_coeff,
                                        converge_spectral_norms)


def _key(i):
  return jax.random.key(i, impl="rbg")   # rbg compiles much faster than threefry on CPU


def _top_sv(fn, x1):
  """Largest singular value of the dense Jacobian of `fn` at the single example `x1`."""
  flat = lambda z: fn(z.reshape(x1.shape)).reshape(-1)
  jac = jax.jacfwd(flat)(jnp.zeros(x1.size, x1.dtype))
  return float(np.linalg.svd(np.asarray(jac, np.float64), compute_uv=False)[0])


def _raw_conv(kernel, strides, padding):
  return lambda z: jax.lax.conv_general_dilated(z, kernel, strides, padding,
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("strides,padding,coeff", [((1, 1), "SAME", 0.5), ((2, 2), "VALID", 0.9)])
def test_conv_operator_norm_after_convergence(strides, padding, coeff):
  x = jnp.ones((2, 6, 6, 2))
  layer = SpectralConv(3, (3, 3), strides=strides, padding=padding, coeff=coeff,
                       kernel_init=nn.initializers.normal(1.0))
  variables = jax.jit(layer.init)(_key(0), x)
  variables = converge_spectral_norms(layer, variables, x, n_rounds=60)
  raw = _top_sv(_raw_conv(variables["params"]["kernel"], strides, padding), x[:1])
  assert raw > coeff * 1.5, "test needs a raw conv operator above coeff"
  sv = _top_sv(lambda z: layer.apply(variables, z) - layer.apply(variables, 0 * z), x[:1])
  assert sv <= coeff + 1e-3
  assert sv >= coeff - 1e-2
  # the stored estimate is the operator norm of the raw conv, not of the reshaped kernel
  assert abs(float(variables["spectral"]["sigma"]) - raw) < 1e-2 * raw


def test_dense_norm_and_training_updates():
  x = jnp.ones((3, 4))
  layer = SpectralDense(5, coeff=0.7, n_init_power_iterations=0,
                        kernel_init=nn.initializers.normal(1.0))
  variables = layer.init(_key(1), x)
  kernel = np.asarray(variables["params"]["kernel"], np.float64)
  true = np.linalg.svd(kernel, compute_uv=False)[0]
  step = jax.jit(lambda vs: layer.apply(vs, x, mutable=["spectral"])[1]["spectral"])
  errors = []
  for _ in range(8):          # training calls: 5 power iterations each, "spectral" mutable
    errors.append(abs(float(variables["spectral"]["sigma"]) - true))
    variables = {**variables, "spectral": step(variables)}
  assert errors[-1] < 1e-3 * true and errors[-1] < errors[0]
  # frozen outside training: a plain apply does not touch "spectral"
  frozen = jax.jit(lambda vs: layer.apply(vs, x))(variables)
  np.testing.assert_allclose(frozen, x @ (kernel / (true / 0.7)) + 0.0, rtol=1e-4, atol=1e-5)
  sv = _top_sv(lambda z: layer.apply(variables, z[None])[0] - layer.apply(variables, 0 * z[None])[0],
               x[0])
  assert abs(sv - 0.7) < 1e-3


def test_small_layer_left_unchanged():
  x = jnp.ones((2, 4))
  layer = SpectralDense(3, coeff=0.9, kernel_init=nn.initializers.normal(0.01))
  variables = layer.init(_key(2), x)
  p = variables["params"]
  np.testing.assert_allclose(layer.apply(variables, x), x @ p["kernel"] + p["bias"], rtol=1e-6)


@pytest.mark.parametrize("coeff", [1.0, 1.5, 0.0, -0.3])
def test_refuses_coeff_outside_open_unit_interval(coeff):
  with pytest.raises(checks.InvjaxError, match=r"open interval \(0, 1\)"):
    check_coeff(coeff)
  with pytest.raises(checks.InvjaxError, match="coeff"):
    SpectralDense(3, coeff=coeff).init(_key(0), jnp.ones((1, 2)))


def test_conv_refuses_other_input_shape():
  layer = SpectralConv(2, (3, 3), n_init_power_iterations=1)
  variables = layer.init(_key(0), jnp.ones((1, 4, 4, 1)))
  with pytest.raises(checks.InvjaxError, match="re-initialise"):
    layer.apply(variables, jnp.ones((1, 6, 6, 1)))
