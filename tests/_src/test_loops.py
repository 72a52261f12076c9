"""invjax.loops: unrolled == lax loops; unroll only models that use lax's convolution on CPU."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src import conv
from invjax._src import loops
from invjax.attacks import gradient
from invjax.nets import cnn

ON_CPU = jax.default_backend() == "cpu"


def test_bounded_while_unrolled_equals_while_loop():
  # Each entry counts up to its own limit; done entries are masked, as the contract asks.
  limits = jnp.array([0, 3, 5, 9])
  cond = lambda s: jnp.any(s < limits)
  body = lambda s: jnp.where(s < limits, s + 1, s)
  for max_iter in (4, 12):
    a = loops.bounded_while(cond, body, jnp.zeros(4, jnp.int32), max_iter, unroll=True)
    b = loops.bounded_while(cond, body, jnp.zeros(4, jnp.int32), max_iter, unroll=False)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, np.minimum(limits, max_iter))
  f = lambda i, s: s * 2 + i
  assert loops.fori(5, f, 1, unroll=True) == loops.fori(5, f, 1, unroll=False) == 58  # 1 -> 2 -> 5 -> 12 -> 27 -> 58


def _models():
  x = jnp.zeros((2, 8, 8, 3))
  lax_conv = nn.Conv(4, (3, 3))
  ours = conv.Conv(4, (3, 3))
  dense = nn.Dense(4)
  v_lax = lax_conv.init(jax.random.PRNGKey(0), x)
  v_ours = ours.init(jax.random.PRNGKey(0), x)
  v_dense = dense.init(jax.random.PRNGKey(0), x.reshape(2, -1))
  return x, {
      "lax": lambda v: lax_conv.apply(v_lax, v).mean(axis=(1, 2)),
      # Nested in a jit and a custom_jvp: the search must descend into sub-jaxprs.
      "lax_nested": jax.jit(lambda v: jax.nn.relu(lax_conv.apply(v_lax, v)).sum(axis=(1, 2))),
      "invjax": lambda v: ours.apply(v_ours, v).mean(axis=(1, 2)),
      "dense": lambda v: dense.apply(v_dense, v.reshape(v.shape[0], -1)),
  }


def test_has_lax_convolution():
  x, models = _models()
  found = {name: loops.has_lax_convolution(fn, x) for name, fn in models.items()}
  assert found == {"lax": True, "lax_nested": True, "invjax": False, "dense": False}
  # Abstract inputs work too (nothing is run).
  assert loops.has_lax_convolution(models["lax"], jax.ShapeDtypeStruct(x.shape, x.dtype))


def test_resolve_unroll():
  x, models = _models()
  assert loops.resolve_unroll(True, 10**6) is True
  assert loops.resolve_unroll(False, 5, models["lax"], x) is False
  assert loops.resolve_unroll(None, loops.MAX_AUTO_UNROLL + 1, models["lax"], x) is False
  expected_cpu = {"lax": True, "lax_nested": True, "invjax": False, "dense": False}
  for name, fn in models.items():
    assert loops.resolve_unroll(None, 20, fn, x) is (ON_CPU and expected_cpu[name]), name
  assert loops.resolve_unroll(None, 20) is ON_CPU  # no model given: the old rule


@pytest.mark.skipif(not ON_CPU, reason="the unroll rule only differs on CPU")
def test_pgd_keeps_the_while_loop_for_invjax_networks():
  model = cnn.SmallCNN(widths=(4,))
  variables = cnn.init(model, jax.random.PRNGKey(0))
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 8, 8, 3))
  y = jnp.array([0, 1])

  def primitives(logits_fn):
    attack = lambda v: gradient.pgd(logits_fn, v, y, key=jax.random.PRNGKey(2), epsilon=0.03,
                                    num_steps=3).x_adv
    return loops._primitives(jax.make_jaxpr(attack)(x).jaxpr)  # pylint: disable=protected-access

  assert "while" in primitives(cnn.logits_fn(model, variables))
  # The same network on lax's convolution is unrolled.
  plain = nn.Conv(4, (3, 3))
  pv = plain.init(jax.random.PRNGKey(0), x)
  assert "while" not in primitives(lambda v: plain.apply(pv, v).mean(axis=(1, 2)))
