"""ParsevalCNN: shapes, Parseval at initialisation (numpy SVD), 1-Lipschitz poolings (dense
Jacobians), and training through `invjax.train.recipes.train_cnn` unchanged."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import invjax
from invjax import data as data_lib
from invjax import train
from invjax.nets import cnn, parseval_cnn
from invjax.robust import parseval
from invjax.train import recipes


def test_shapes_and_parameters():
  model = parseval_cnn.ParsevalCNN(num_classes=7, widths=(8, 16), blocks=2)
  variables = cnn.init(model, jax.random.PRNGKey(0))
  params = variables["params"]
  assert set(variables) == {"params"}  # no batch statistics
  logits = model.apply(variables, jnp.full((3, 32, 32, 3), 0.5))
  assert logits.shape == (3, 7)
  assert params["head"]["kernel"].shape == (16, 7)
  assert params["ParsevalBlock_2"]["shortcut"]["kernel"].shape == (1, 1, 8, 16)
  assert "shortcut" not in params["ParsevalBlock_0"]
  for i in range(4):
    np.testing.assert_array_equal(params[f"ParsevalBlock_{i}"]["aggregation"], [0.5, 0.5])
  with pytest.raises(invjax.InvjaxError, match="channels"):
    model.apply(variables, jnp.zeros((1, 32, 32, 1)))


def test_initial_layers_are_parseval():
  model = parseval_cnn.ParsevalCNN(widths=(8, 16))
  params = cnn.init(model, jax.random.PRNGKey(1))["params"]
  kernels = [np.asarray(leaf, np.float64) for path, leaf in
             jax.tree_util.tree_leaves_with_path(params)
             if jax.tree_util.keystr(path).endswith("['kernel']")]
  assert len(kernels) == 7
  for k in kernels:
    if k.ndim == 4:  # sqrt(k*k) * [out, k*k*in]
      k = np.sqrt(k.shape[0] * k.shape[1]) * np.moveaxis(k, -1, 0).reshape(k.shape[-1], -1).T
    np.testing.assert_allclose(np.linalg.svd(k, compute_uv=False), 1.0, atol=1e-5)


@pytest.mark.parametrize("pool", ["pool_2x2", "global_pool"])
def test_poolings_are_exactly_one_lipschitz(pool):
  fn = getattr(parseval_cnn, pool)
  x = jax.random.normal(jax.random.PRNGKey(2), (1, 4, 4, 2))
  jac = jax.jacfwd(lambda v: fn(v.reshape(x.shape)).ravel())(x.ravel())
  np.testing.assert_allclose(np.linalg.svd(np.asarray(jac), compute_uv=False).max(), 1.0,
                             atol=1e-6)
  if pool == "pool_2x2":
    np.testing.assert_allclose(fn(x), 2.0 * jnp.mean(x.reshape(1, 2, 2, 2, 2, 2), (2, 4)),
                               atol=1e-6)


def test_trains_through_train_cnn(tmp_path):
  train_ds = data_lib.take_prefix(data_lib.load("cifar10_mini", "train"), 128)
  test_ds = data_lib.take_prefix(data_lib.load("cifar10_mini", "test"), 64)
  model = parseval_cnn.ParsevalCNN(widths=(8, 16))
  optimizer = optax.chain(
      train.make_optimizer(learning_rate=3e-3, num_steps=6, warmup_steps=1),
      parseval.parseval_retraction(key=jax.random.PRNGKey(0), row_fraction=0.5))
  variables, accuracy = recipes.train_cnn(
      model, train_ds, test_ds, str(tmp_path), optimizer=optimizer, num_steps=6,
      batch_size=16, log_every=3, checkpoint_every=6, eval_batch_size=64, progress=False)
  assert 0.0 <= accuracy <= 1.0
  assert [r["step"] for r in train.read_metrics(str(tmp_path))] == [3, 6]
  before = cnn.init(model, jax.random.PRNGKey(0))["params"]
  assert not np.allclose(variables["params"]["head"]["kernel"], before["head"]["kernel"])
  a = np.asarray(variables["params"]["ParsevalBlock_1"]["aggregation"])
  assert a.min() >= 0 and abs(a.sum() - 1) < 1e-5
