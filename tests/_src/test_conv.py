"""invjax.conv: same values and derivatives as lax; canonical input-gradient convs in loops."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src import compilation
from invjax._src import conv

ON_CPU = jax.default_backend() == "cpu"

# (input shape, kernel shape, lax keyword arguments): strides, every padding form,
# dilations, feature groups, NCHW and 1-D layouts.
CASES = [
    ((2, 9, 10, 4), (3, 3, 4, 6),
     dict(window_strides=(1, 1), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))),
    ((2, 9, 10, 4), (3, 3, 4, 6),
     dict(window_strides=(2, 2), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))),
    ((2, 9, 10, 4), (3, 2, 4, 6),
     dict(window_strides=(2, 1), padding="VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))),
    ((2, 9, 10, 4), (3, 3, 2, 6),
     dict(window_strides=(1, 2), padding=((1, 2), (0, 1)), rhs_dilation=(2, 1),
          feature_group_count=2, dimension_numbers=("NHWC", "HWIO", "NHWC"))),
    ((2, 4, 9, 10), (6, 4, 3, 3),
     dict(window_strides=(1, 1), padding=((1, 1), (2, 0)), lhs_dilation=(2, 1),
          dimension_numbers=("NCHW", "OIHW", "NCHW"))),
    ((2, 11, 3), (3, 3, 5),
     dict(window_strides=(2,), padding="SAME", dimension_numbers=("NWC", "WIO", "NWC"))),
    ((2, 9, 10, 4), (5, 5, 1, 4),
     dict(window_strides=(1, 1), padding="SAME", feature_group_count=4,
          dimension_numbers=("NHWC", "HWIO", "NHWC"))),
]


def _pair(case):
  x_shape, k_shape, kw = case
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  k = jax.random.normal(jax.random.PRNGKey(1), k_shape)
  ref = lambda a, b: jax.lax.conv_general_dilated(a, b, **kw)
  ours = lambda a, b: conv.conv_general_dilated(a, b, **kw)
  return x, k, ref, ours


def _close(a, b):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_values_and_derivatives_match_lax(case):
  x, k, ref, ours = _pair(case)
  y = ref(x, k)
  _close(jax.jit(ours)(x, k), y)
  ct = jax.random.normal(jax.random.PRNGKey(2), y.shape)
  for a, b in zip(jax.vjp(ours, x, k)[1](ct), jax.vjp(ref, x, k)[1](ct)):
    _close(a, b)
  tangents = (0.3 * x, 0.7 * k)
  _close(jax.jvp(ours, (x, k), tangents)[1], jax.jvp(ref, (x, k), tangents)[1])
  # Second order: forward-over-reverse through both arguments.
  hvp = lambda f: jax.jvp(jax.grad(lambda a, b: jnp.sum(f(a, b) ** 2), argnums=(0, 1)),
                          (x, k), tangents)[1]
  for a, b in zip(hvp(ours), hvp(ref)):
    _close(a, b)


@pytest.mark.parametrize("case", CASES[:2] + CASES[4:5], ids=["nhwc", "strided", "nchw"])
def test_vmap_over_input_kernel_and_gradients(case):
  x, k, ref, ours = _pair(case)
  xs, ks = jnp.stack([x, -2 * x]), jnp.stack([k, 0.5 * k])
  _close(jax.vmap(lambda a: ours(a, k))(xs), jax.vmap(lambda a: ref(a, k))(xs))
  _close(jax.vmap(lambda b: ours(x, b))(ks), jax.vmap(lambda b: ref(x, b))(ks))
  _close(jax.vmap(ours)(xs, ks), jax.vmap(ref)(xs, ks))
  per_example = lambda f: jax.vmap(jax.grad(lambda a: jnp.sum(f(a[None], k) ** 2)))(x)
  _close(per_example(ours), per_example(ref))


def test_flax_conv_same_parameters_and_outputs():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  ours, ref = conv.Conv(5, (3, 3), strides=2), nn.Conv(5, (3, 3), strides=2)
  variables = ours.init(jax.random.PRNGKey(1), x)
  assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(
      ref.init(jax.random.PRNGKey(1), x))
  _close(ours.apply(variables, x), ref.apply(variables, x))


def test_lax_errors_are_kept():
  x = jnp.ones((1, 5, 5, 2))
  with pytest.raises(ValueError, match="String padding is not implemented"):
    conv.conv_general_dilated(x, jnp.ones((3, 3, 2, 2)), (1, 1), "SAME", lhs_dilation=(2, 2),
                              dimension_numbers=("NHWC", "HWIO", "NHWC"))
  with pytest.raises(TypeError):
    conv.conv_general_dilated(x, jnp.ones((3, 3, 2, 2), jnp.float16), (1, 1), "SAME",
                              dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _grad_in_loop_labels(conv_fn):
  """dim_labels of the compiled convolutions of input-gradient steps inside a fori_loop."""
  kernels = [0.1 * jax.random.normal(jax.random.PRNGKey(i), (3, 3, 8, 8)) for i in range(2)]

  def loss(x):
    for k in kernels:
      x = jax.nn.relu(conv_fn(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    return jnp.sum(x)

  step = lambda _, x: x - 0.01 * jnp.sign(jax.grad(loss)(x))
  fn = compilation.jit(lambda x: jax.lax.fori_loop(0, 3, step, x))
  text = fn.lower(jax.ShapeDtypeStruct((2, 16, 16, 8), jnp.float32)).compile().as_text()
  return set(re.findall(r"convolution\(.*dim_labels=([a-z0-9_>-]+)", text))


@pytest.mark.skipif(not ON_CPU, reason="XLA:CPU canonicalisation")
def test_input_gradient_in_loop_is_canonical(monkeypatch):
  # Every convolution, forward and backward, has an HWIO ("01io") kernel: Eigen's path.
  assert _grad_in_loop_labels(conv.conv_general_dilated) == {"b01f_01io->b01f"}
  # With the switch off, `conv_general_dilated` is lax's: same program as lax.
  monkeypatch.setenv(conv.ENV_SWITCH, "0")
  assert (_grad_in_loop_labels(conv.conv_general_dilated)
          == _grad_in_loop_labels(jax.lax.conv_general_dilated))


def test_the_primitive_is_what_runs(monkeypatch):
  """Fails loudly if a JAX upgrade makes the registration a no-op (the jaxpr would then hold
  lax's convolution and everything would pass, only slower in loops)."""
  x = jnp.ones((1, 8, 8, 3))
  k = jnp.ones((3, 3, 3, 4))
  # a new function object per trace: JAX caches traces by function
  f = lambda: lambda a, b: conv.conv_general_dilated(
      a, b, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  names = lambda fn: {e.primitive.name for e in jax.make_jaxpr(fn)(x, k).jaxpr.eqns}
  assert "invjax_conv" in names(f())
  fwd = f()
  grad_names = names(lambda a, b: jax.grad(lambda v: jnp.sum(fwd(v, b)))(a))
  assert "conv_general_dilated" in grad_names  # the transposed (input-gradient) convolution
  monkeypatch.setenv(conv.ENV_SWITCH, "0")
  off = names(f())
  assert "invjax_conv" not in off and "conv_general_dilated" in off
