"""invjax.compilation.jit: CPU compiler options, same values as jax.jit, safe when nested."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src import compilation
from invjax import parallel
from invjax.nets import cnn

ON_CPU = jax.default_backend() == "cpu"


@pytest.fixture(scope="module")
def small_cnn():
  model = cnn.SmallCNN(widths=(8, 16))
  variables = cnn.init(model, jax.random.PRNGKey(0))
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 32, 32, 3))
  return model, variables, x


def _conv(x, k):
  return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _ynn_fusions_with_convolution(hlo_text):
  """Names of fused computations run by YNNPACK that contain a convolution."""
  bodies = {}
  name = None
  for line in hlo_text.splitlines():
    if line.startswith("%") or line.startswith("ENTRY") or line.startswith("fused_computation"):
      name = line.split()[0].lstrip("%")
      bodies[name] = []
    elif name is not None:
      bodies[name].append(line)
  called = [line.split("calls=%")[1].split(",")[0] for line in hlo_text.splitlines()
            if "__ynn_fusion" in line and "calls=%" in line]
  return [c for c in called if any(" convolution(" in l for l in bodies.get(c, []))]


@pytest.mark.skipif(not ON_CPU, reason="the options only apply to the CPU backend")
def test_options_on_cpu_and_env_switch(monkeypatch):
  monkeypatch.setattr(parallel, "available_cores", lambda: 2)
  assert compilation.compiler_options() == compilation.CPU_LIBRARY_FUSION
  monkeypatch.setenv(compilation.ENV_VAR, "0")
  assert compilation.compiler_options() == {}
  monkeypatch.setenv(compilation.ENV_VAR, "1")
  assert compilation.compiler_options() == compilation.CPU_LIBRARY_FUSION


@pytest.mark.skipif(not ON_CPU, reason="the options only apply to the CPU backend")
def test_convolutions_leave_ynnpack(monkeypatch):
  monkeypatch.setattr(parallel, "available_cores", lambda: 2)
  # Compiled only. Large enough for the default cost model to pick YNNPACK.
  x = jax.ShapeDtypeStruct((32, 32, 32, 32), jnp.float32)
  k = jax.ShapeDtypeStruct((3, 3, 32, 32), jnp.float32)
  text = compilation.jit(_conv).lower(x, k).compile().as_text()
  assert " convolution(" in text
  assert _ynn_fusions_with_convolution(text) == []


def test_same_values_as_jax_jit(small_cnn):
  model, variables, x = small_cnn
  fn = cnn.logits_fn(model, variables)
  grad = jax.grad(lambda v: jnp.sum(fn(v) ** 2))
  np.testing.assert_allclose(compilation.jit(fn)(x), jax.jit(fn)(x), rtol=1e-5, atol=1e-5)
  g_fast = compilation.jit(grad)(x)
  g_ref = jax.jit(grad)(x)
  np.testing.assert_allclose(g_fast, g_ref, rtol=1e-4, atol=1e-4 * float(jnp.abs(g_ref).max()))


def test_static_argnames_decorator_and_lower():
  @functools.partial(compilation.jit, static_argnames=("power",))
  def f(a, *, power):
    return a ** power

  a = jnp.arange(4.0)
  np.testing.assert_allclose(f(a, power=3), a ** 3)
  assert "f32[4]" in f.lower(a, power=2).as_text().replace("tensor<4xf32>", "f32[4]")
  assert f.__name__ == "f"


def test_nested_in_user_transforms():
  f = compilation.jit(lambda a: jnp.sin(a) * 2.0)
  a = jnp.linspace(0.0, 1.0, 5)
  np.testing.assert_allclose(jax.jit(f)(a), 2 * np.sin(a), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(lambda v: jnp.sum(f(v)))(a), 2 * np.cos(a), rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(f)(a), 2 * np.sin(a), rtol=1e-6)

  # A tracer reaching the inner function through a closure, not its arguments.
  def outer(v):
    return compilation.jit(lambda: v * 3.0)()

  np.testing.assert_allclose(jax.jit(outer)(a), 3 * a, rtol=1e-6)


@pytest.mark.skipif(not ON_CPU, reason="the options only apply to the CPU backend")
def test_options_follow_cores_per_device(monkeypatch):
  for cores, devices, eigen in [(2, 1, True), (2, 2, False), (1, 1, False), (16, 4, True),
                                (16, 16, False), (16, 9, False)]:
    monkeypatch.setattr(parallel, "available_cores", lambda c=cores: c)
    want = compilation.CPU_LIBRARY_FUSION if eigen else {}
    assert compilation.compiler_options(devices) == want, (cores, devices)
