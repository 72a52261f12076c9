"""Data parallelism: one step on 8 fake CPU devices equals the same step on 1 device.

Runs in a subprocess because the fake device count must be set before JAX starts.
"""
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from invjax import parallel
from invjax._src.checks import InvjaxError

_SCRIPT = textwrap.dedent("""
  import jax, jax.numpy as jnp, numpy as np, optax, flax.linen as nn
  from invjax import data as data_lib, parallel, train
  from invjax._src.checks import InvjaxError
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


_CORES_SCRIPT = textwrap.dedent("""
  import jax
  from invjax import parallel
  assert parallel.cpu_cores_as_devices(3) == 3
  import jax.numpy as jnp, numpy as np
  from invjax._src import compilation
  from invjax.attacks import gradient
  from invjax._src.checks import InvjaxError
  from invjax.nets import cnn
  assert jax.device_count() == 3, jax.devices()
  try:
    parallel.cpu_cores_as_devices(2)
    raise SystemExit("no error after JAX started")
  except InvjaxError as e:
    assert "before the first JAX operation" in str(e) and "3 device(s)" in str(e), e

  model = cnn.SmallCNN(widths=(4, 8))
  variables = cnn.init(model, jax.random.PRNGKey(0))
  logits_fn = cnn.logits_fn(model, variables)
  x = jax.random.uniform(jax.random.PRNGKey(1), (7, 32, 32, 3))
  y = jnp.arange(7) % 10
  def attack(xb, yb):
    return gradient.pgd(logits_fn, xb, yb, key=jax.random.PRNGKey(2), epsilon=0.5, norm="l2",
                        num_steps=3, random_start=False, early_stop=False)
  whole = attack(x, y)
  split = parallel.call_sharded(attack, x, y)
  assert split.x_adv.shape == x.shape and split.success.shape == (7,), split.x_adv.shape
  np.testing.assert_allclose(np.asarray(split.x_adv), np.asarray(whole.x_adv), atol=1e-4)
  np.testing.assert_array_equal(np.asarray(split.success), np.asarray(whole.success))
  assert np.shape(split.num_inverse_evals) == np.shape(whole.num_inverse_evals)
  # the padded batch of 9 was placed on the 3 devices; the attack compiled for 3 devices
  seen = gradient._pgd._by_devices  # pylint: disable=protected-access
  assert set(seen) == {1, 3}, seen
  # one core per device or fewer: YNNPACK kept (plain jit); one device with >= 2 cores: Eigen
  assert seen[3] is gradient._pgd._plain  # pylint: disable=protected-access
  assert (seen[1] is gradient._pgd._plain) == (parallel.available_cores() < 2)
  w = jax.device_put(jnp.ones((3, 2)), jax.devices()[0])  # committed to one device
  matmul = jax.jit(lambda a, b: a @ b)
  try:
    parallel.call_sharded(lambda a: matmul(a, w), jnp.ones((6, 3)))
    raise SystemExit("no error for a weight committed to one device")
  except InvjaxError as e:
    assert "parallel.replicate" in str(e), e
  w3 = parallel.replicate(w, parallel.data_mesh())
  np.testing.assert_allclose(parallel.call_sharded(lambda a: matmul(a, w3), jnp.ones((5, 3))),
                             3 * np.ones((5, 2)))
  eps7 = jnp.full((7,), 0.5)
  def attack_eps(xb, yb, eb):
    return gradient.pgd(logits_fn, xb, yb, key=jax.random.PRNGKey(2), epsilon=eb, norm="l2",
                        num_steps=3, random_start=False, early_stop=False)
  try:  # a per-example epsilon closed over: the error names the user's batch size
    parallel.call_sharded(lambda xb, yb: attack_eps(xb, yb, eps7), x, y)
    raise SystemExit("no error for a closed-over per-example epsilon")
  except InvjaxError as e:
    assert "batch of 7 examples" in str(e) and "batch argument" in str(e), e
  split_eps = parallel.call_sharded(attack_eps, x, y, eps7)  # passed with the batch: fine
  np.testing.assert_allclose(np.asarray(split_eps.x_adv), np.asarray(whole.x_adv), atol=1e-4)
  try:
    parallel.call_sharded(attack, x, y[:5])
    raise SystemExit("no error for mismatched batch sizes")
  except InvjaxError as e:
    assert "same leading axis" in str(e), e
  print("OK")
""")


def test_cpu_cores_as_devices_and_call_sharded():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, "-c", _CORES_SCRIPT], env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "OK" in proc.stdout


def test_forced_device_count_wins_and_bad_count(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=5")
  assert parallel.cpu_cores_as_devices(2) == 5  # XLA_FLAGS left alone; no JAX call made
  monkeypatch.setenv("XLA_FLAGS", "")
  with pytest.raises(InvjaxError, match="num_devices must be >= 1"):
    parallel.cpu_cores_as_devices(0)
  jax.devices()  # JAX has started in this process
  with pytest.raises(InvjaxError, match="before the first JAX operation"):
    parallel.cpu_cores_as_devices(2)


def test_call_sharded_one_device_is_a_plain_call():
  mesh = parallel.data_mesh(jax.local_devices()[:1])
  x = np.arange(5.0)
  out = parallel.call_sharded(lambda a, b, scale: (a * scale, b.sum()), x, x[::-1], mesh=mesh,
                              scale=2.0)
  np.testing.assert_allclose(out[0], 2 * x)
  assert float(out[1]) == 10.0
  with pytest.raises(InvjaxError, match="at least one batch array"):
    parallel.call_sharded(lambda: 0, mesh=mesh)


def test_global_and_local_meshes_in_one_process():
  glob, local = parallel.global_data_mesh(), parallel.local_data_mesh()
  assert list(glob.devices.flat) == jax.devices()
  assert list(local.devices.flat) == jax.local_devices()
  assert parallel.data_mesh().devices.tolist() == glob.devices.tolist()  # the old name
  n = parallel.num_data_shards(glob)
  assert parallel.process_rows(6 * n, glob) == slice(0, 6 * n)
  x = np.arange(6 * n * 2, dtype=np.float32).reshape(6 * n, 2)
  for put in (parallel.global_batch({"x": x}, glob, 6 * n), parallel.shard_batch({"x": x}, glob)):
    assert put["x"].sharding == parallel.batch_sharding(glob)
    np.testing.assert_array_equal(parallel.to_host(put)["x"], x)
  with pytest.raises(InvjaxError, match="no devices given"):
    parallel.local_data_mesh([])
  with pytest.raises(InvjaxError, match="leading batch axis"):
    parallel.global_batch({"s": np.float32(1.0)}, glob, n)


def test_process_block_shares_whole_items_out_in_order():
  for n, count in [(10, 3), (2, 4), (0, 2), (7, 1), (100, 7)]:
    blocks = [parallel.process_block(n, process_index=p, process_count=count)
              for p in range(count)]
    np.testing.assert_array_equal(np.concatenate([np.arange(n)[b] for b in blocks]),
                                  np.arange(n))  # every item once, in process order
    sizes = [b.stop - b.start for b in blocks]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n
  assert parallel.process_block(5) == slice(0, 5)  # one process: everything
  with pytest.raises(InvjaxError, match="process index 3 out of range for 3"):
    parallel.process_block(5, process_index=3, process_count=3)
  with pytest.raises(InvjaxError, match="num_items must be >= 0"):
    parallel.process_block(-1)


def test_gather_blocks_in_one_process_and_its_errors():
  rows = np.arange(6.0).reshape(3, 2)
  np.testing.assert_array_equal(parallel.gather_blocks(rows, [3]), rows)
  with pytest.raises(InvjaxError, match="2 sizes for 1 processes"):
    parallel.gather_blocks(rows, [3, 0])
  with pytest.raises(InvjaxError, match="holds \\(3,\\) rows, its size says 2"):
    parallel.gather_blocks(rows, [2])
