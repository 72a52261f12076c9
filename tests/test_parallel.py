"""Data parallelism: one step on 8 fake CPU devices equals the same step on 1 device.

Runs in a subprocess because the fake device count must be set before JAX starts.
"""
import os
import subprocess
import sys
import textwrap

import jax
import pytest

from invjax import parallel
from invjax.checks import InvjaxError

_SCRIPT = textwrap.dedent("""
  import jax, jax.numpy as jnp, numpy as np, optax, flax.linen as nn
  from invjax import data as data_lib, parallel, train
  from invjax.checks import InvjaxError
  assert jax.device_count() == 8, jax.devices()

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = nn.Dense(4)(x.reshape(x.shape[0], -1))
      h = nn.BatchNorm(use_running_average=False)(h)  # statistics over the GLOBAL batch
      return nn.Dense(3)(nn.relu(h))

  net, opt = Net(), optax.sgd(0.1, momentum=0.9)  # momentum trace = grads after 1 step

  def loss_fn(params, model_state, batch, rng):
    noise = 1e-3 * jax.random.normal(rng, batch["x"].shape)  # the step rng must agree too
    logits, new = net.apply({"params": params, **model_state},
                            data_lib.to_float(batch["x"]) + noise, mutable=["batch_stats"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    return ce, (new, {})

  rs = np.random.default_rng(0)
  batch = {"x": rs.integers(0, 256, (16, 6, 6, 3)).astype(np.uint8),
           "y": rs.integers(0, 3, 16).astype(np.int32)}
  variables = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 6, 6, 3)))
  params, ms = train.split_variables(variables)
  state = train.TrainState.create(params, opt, jax.random.PRNGKey(1), ms)
  step = train.make_train_step(loss_fn, opt)

  out = {}
  for n in (1, 8):
    mesh = parallel.data_mesh(jax.local_devices()[:n])
    st, b = parallel.replicate(state, mesh), parallel.shard_batch(batch, mesh)
    assert len(b["x"].sharding.device_set) == n
    new, metrics = step(st, b)
    out[n] = (float(metrics["loss"]), new.opt_state, new)

  np.testing.assert_allclose(out[8][0], out[1][0], rtol=1e-5, atol=1e-6)
  grads1, grads8 = jax.tree.leaves(out[1][1]), jax.tree.leaves(out[8][1])
  assert len(grads1) == len(jax.tree.leaves(params)) and max(float(abs(g).max()) for g in grads1) > 0
  for a, b in zip(grads1, grads8):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(out[1][2]), jax.tree.leaves(out[8][2])):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
  try:
    parallel.shard_batch({"x": batch["x"][:12]}, parallel.data_mesh())
    raise SystemExit("no error for 12 examples on 8 devices")
  except InvjaxError as e:
    assert "multiple of the number of devices (8)" in str(e), e
  print("OK", out[8][0])
""")


def test_eight_fake_devices_match_one_device():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "OK" in proc.stdout


def test_batch_size_must_divide_devices_message():
  mesh = parallel.data_mesh()
  n = len(jax.local_devices())
  parallel.check_batch_size(4 * n, mesh)
  with pytest.raises(InvjaxError, match="positive multiple"):
    parallel.check_batch_size(0, mesh)
  with pytest.raises(InvjaxError, match="leading batch axis"):
    parallel.shard_batch({"s": 1.0}, mesh)
