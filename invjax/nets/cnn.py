"""CIFAR-10 teacher networks (non-invertible) in Flax linen.

Two models, both taking float images in [0, 1], NHWC `[batch, H, W, C]`, and
normalising them per channel inside (so attacks see the [0, 1] pixel box):

  * `SmallCNN`: 3 stages of (conv 3x3 + ReLU) x 2 + 2x2 max-pool, global average
    pool, dense head. About 0.3M parameters at the default widths; trains in
    minutes on a CPU.
  * `ResNet18`: the CIFAR variant of ResNet-18 (He et al. 2016; 3x3 stem, no
    max-pool, 4 stages of 2 basic blocks, widths 64-128-256-512), BatchNorm.
    Meant for GPU/TPU runs (about 11M parameters).

Both: `model.apply(variables, x, train=False) -> logits [batch, num_classes]`.
ResNet18 keeps BatchNorm statistics in the "batch_stats" collection (pass
`mutable=["batch_stats"]` with `train=True`). `TEACHERS` is the registry by name;
`logits_fn(model, variables)` closes over the variables and returns a pure
`x -> logits` function (eval mode) for attacks and distillation;
`make_loss_fn` / `make_metric_fn` plug a teacher into `invjax.train`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from invjax._src import checks
from invjax._src import conv
from invjax import data as data_lib

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _normalise(x: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """Checks an NHWC float batch and returns (x - mean) / std per channel."""
  checks.check_images(x, "x", rank=4)
  if x.shape[-1] != len(mean) or len(mean) != len(std):
    raise checks.InvjaxError(
        f"x has {x.shape[-1]} channels but the model normalises {len(mean)} (mean) / "
        f"{len(std)} (std) channels; pass mean=/std= of the right length")
  return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)


def max_pool_2x2(h: jax.Array) -> jax.Array:
  """2x2 max pooling with stride 2 (NHWC, even H and W), as a reshape + max.

  Same values as `nn.max_pool(h, (2, 2), strides=(2, 2))`; its gradient is an elementwise
  mask instead of XLA's SelectAndScatter, which makes an input-gradient step of `SmallCNN`
  faster on CPU (attacks differentiate through it at every step).
  """
  b, height, width, c = h.shape
  return jnp.max(h.reshape(b, height // 2, 2, width // 2, 2, c), axis=(2, 4))


class SmallCNN(nn.Module):
  """A fast CIFAR CNN: [(conv-relu) x 2 + maxpool] per width, GAP, dense.

  Attributes:
    num_classes: number of logits.
    widths: channels of each stage; each stage halves the resolution.
    mean, std: per-channel normalisation applied to the [0, 1] input.
  """
  num_classes: int = 10
  widths: Sequence[int] = (32, 64, 128)
  mean: Sequence[float] = CIFAR10_MEAN
  std: Sequence[float] = CIFAR10_STD

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: float [batch, H, W, C] in [0, 1] -> logits [batch, num_classes]."""
    del train  # no dropout / batch norm
    batch = x.shape[0]
    h = _normalise(x, self.mean, self.std)
    for width in self.widths:
      h = nn.relu(conv.Conv(width, (3, 3))(h))
      h = nn.relu(conv.Conv(width, (3, 3))(h))
      h = max_pool_2x2(h)
    h = jnp.mean(h, axis=(1, 2))
    logits = nn.Dense(self.num_classes)(h)
    chex.assert_shape(logits, (batch, self.num_classes))
    return logits


class BasicBlock(nn.Module):
  """ResNet basic block: two 3x3 conv-BN with an identity (or 1x1 projection) shortcut."""
  width: int
  stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)
    h = conv.Conv(self.width, (3, 3), strides=self.stride, use_bias=False)(x)
    h = nn.relu(norm()(h))
    h = conv.Conv(self.width, (3, 3), use_bias=False)(h)
    h = norm()(h)
    if self.stride != 1 or x.shape[-1] != self.width:
      x = conv.Conv(self.width, (1, 1), strides=self.stride, use_bias=False)(x)
      x = norm()(x)
    return nn.relu(h + x)


class ResNet18(nn.Module):
  """CIFAR ResNet-18: 3x3 stem, stages of `blocks` basic blocks, GAP, dense.

  Attributes:
    num_classes: number of logits.
    widths: channels per stage (the first stage keeps the resolution, the
      others halve it).
    blocks: basic blocks per stage.
    mean, std: per-channel normalisation applied to the [0, 1] input.
  """
  num_classes: int = 10
  widths: Sequence[int] = (64, 128, 256, 512)
  blocks: Sequence[int] = (2, 2, 2, 2)
  mean: Sequence[float] = CIFAR10_MEAN
  std: Sequence[float] = CIFAR10_STD

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: float [batch, H, W, C] in [0, 1] -> logits [batch, num_classes]."""
    batch = x.shape[0]
    h = _normalise(x, self.mean, self.std)
    h = conv.Conv(self.widths[0], (3, 3), use_bias=False)(h)
    h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(h))
    for stage, (width, n_blocks) in enumerate(zip(self.widths, self.blocks)):
      for i in range(n_blocks):
        stride = 2 if (stage > 0 and i == 0) else 1
        h = BasicBlock(width, stride)(h, train)
    h = jnp.mean(h, axis=(1, 2))
    logits = nn.Dense(self.num_classes)(h)
    chex.assert_shape(logits, (batch, self.num_classes))
    return logits


TEACHERS = {"small_cnn": SmallCNN, "resnet18": ResNet18}


def make_teacher(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
  """Builds a teacher from the registry `TEACHERS` by name."""
  if name not in TEACHERS:
    raise checks.InvjaxError(f"unknown teacher {name!r}; known: {sorted(TEACHERS)}")
  return TEACHERS[name](num_classes=num_classes, **kwargs)


def init(model: nn.Module, key: jax.Array, image_shape=(32, 32, 3)):
  """Initial variables of `model` for images of `image_shape` (HWC)."""
  return model.init(key, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)


def logits_fn(model: nn.Module, variables) -> Callable[[jax.Array], jax.Array]:
  """Pure eval-mode function `x [batch, H, W, C] in [0,1] -> logits [batch, classes]`."""
  def fn(x):
    return model.apply(variables, x, train=False)
  return fn


def make_loss_fn(model: nn.Module, *, augment_fn=None, weight_decay: float = 0.0):
  """Cross-entropy `loss_fn(params, model_state, batch, rng)` for `invjax.train`.

  `batch` is `{"x": uint8 [B, H, W, C], "y": int32 [B]}`; images are converted
  to [0, 1] floats (and augmented by `augment_fn(key, x)` when given); BatchNorm
  statistics (if any) are updated in train mode. `weight_decay` adds an L2
  penalty `wd/2 * ||params||^2` on the kernels.
  """
  def loss_fn(params, model_state, batch, rng):
    x = data_lib.to_float(batch["x"])
    if augment_fn is not None:
      x = augment_fn(rng, x)
    variables = {"params": params, **model_state}
    if model_state:
      logits, new_state = model.apply(variables, x, train=True, mutable=list(model_state))
    else:
      logits, new_state = model.apply(variables, x, train=True), {}
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]))
    loss = ce
    if weight_decay:
      kernels = [p for path, p in jax.tree_util.tree_leaves_with_path(params)
                 if "kernel" in jax.tree_util.keystr(path)]
      loss = loss + 0.5 * weight_decay * sum(jnp.sum(jnp.square(k)) for k in kernels)
    acc = jnp.mean(jnp.argmax(logits, -1) == batch["y"])
    return loss, (new_state, {"ce": ce, "accuracy": acc})

  return loss_fn


def make_metric_fn(model: nn.Module):
  """Per-example `{"accuracy": 0/1 [B]}` for `invjax.train.make_eval_step`."""
  def metric_fn(params, model_state, batch):
    logits = model.apply({"params": params, **model_state}, data_lib.to_float(batch["x"]))
    return {"accuracy": (jnp.argmax(logits, -1) == batch["y"]).astype(jnp.float32)}

  return metric_fn
