"""Tests for the CIFAR teachers in invjax.nets.cnn."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from invjax import train
from invjax._src.checks import InvjaxError
from invjax.nets import cnn


def _num_params(variables):
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))


def test_resnet18_has_the_reference_parameter_count():
  # The CIFAR ResNet-18 of kuangliu/pytorch-cifar (3x3 stem, no max-pool, bias-free convs,
  # BN scale+shift, Linear(512, 10)) has 11,173,962 trainable parameters.
  shapes = jax.eval_shape(lambda: cnn.init(cnn.ResNet18(), jax.random.PRNGKey(0)))
  assert _num_params(shapes) == 11_173_962
  assert "batch_stats" in shapes


def test_small_cnn_normalises_inside():
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 8, 8, 3))
  model = cnn.SmallCNN(widths=(4,))
  variables = jax.jit(lambda k: cnn.init(model, k, (8, 8, 3)))(jax.random.PRNGKey(0))
  logits, inter = jax.jit(lambda v, x: model.apply(
      v, x, mutable=["intermediates"],
      capture_intermediates=lambda mdl, _: mdl.name == "Conv_0"))(variables, x)
  assert logits.shape == (2, 10)
  # Independent reference for the first layer: lax convolution of the hand-normalised input.
  mean, std = np.array(cnn.CIFAR10_MEAN), np.array(cnn.CIFAR10_STD)
  k = variables["params"]["Conv_0"]["kernel"]
  b = variables["params"]["Conv_0"]["bias"]
  want = jax.lax.conv_general_dilated(
      (x - mean) / std, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST) + b
  got = inter["intermediates"]["Conv_0"]["__call__"][0]
  np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((2, 8, 8, 1), np.float32), "channels"),
    (np.zeros((2, 8, 8, 3), np.uint8), "floating-point"),
    (np.zeros((2, 192), np.float32), "rank 4"),
    (np.full((2, 8, 8, 3), 2.0, np.float32), r"\[0.0, 1.0\]"),
])
def test_bad_inputs(bad, match):
  model = cnn.SmallCNN(widths=(4,))
  variables = jax.eval_shape(lambda: cnn.init(model, jax.random.PRNGKey(0), (8, 8, 3)))
  with pytest.raises(InvjaxError, match=match):
    model.apply(variables, bad)
  with pytest.raises(InvjaxError, match="unknown teacher"):
    cnn.make_teacher("vgg")


def test_tiny_resnet_trains_and_updates_batch_stats():
  model = cnn.make_teacher("resnet18", num_classes=4, widths=(4, 8), blocks=(1, 1))
  variables = jax.jit(lambda k: cnn.init(model, k, (8, 8, 3)))(jax.random.PRNGKey(0))
  params, model_state = train.split_variables(variables)
  rng = np.random.RandomState(0)
  batch = {"x": rng.randint(0, 256, (16, 8, 8, 3)).astype(np.uint8),
           "y": rng.randint(0, 4, 16).astype(np.int32)}
  opt = optax.adam(1e-2)
  state = train.TrainState.create(params, opt, jax.random.PRNGKey(1), model_state)
  step = train.make_train_step(cnn.make_loss_fn(model), opt)
  eval_step = train.make_eval_step(cnn.make_metric_fn(model))
  losses = []
  for _ in range(15):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.5 * losses[0], losses
  before = model_state["batch_stats"]
  after = state.model_state["batch_stats"]
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
  # Eval mode uses the running statistics: logits differ from train mode, accuracy from
  # the eval step equals the argmax of logits_fn.
  fn = jax.jit(cnn.logits_fn(model, state.variables))
  x = jnp.asarray(batch["x"], jnp.float32) / 255.0
  acc = eval_step(state, batch)["accuracy"]
  np.testing.assert_array_equal(acc, (np.argmax(fn(x), 1) == batch["y"]).astype(np.float32))


def test_max_pool_2x2_matches_flax_max_pool():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  h = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 8, 3))
  np.testing.assert_array_equal(cnn.max_pool_2x2(h), nn.max_pool(h, (2, 2), strides=(2, 2)))
  # Gradient: 1 at each window's argmax (no ties in random data), as SelectAndScatter gives.
  g = jax.grad(lambda v: jnp.sum(cnn.max_pool_2x2(v)))(h)
  g_ref = jax.grad(lambda v: jnp.sum(nn.max_pool(v, (2, 2), strides=(2, 2))))(h)
  np.testing.assert_array_equal(g, g_ref)
