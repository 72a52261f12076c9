"""A tiny `invjax.nets.cnn.SmallCNN` on 16x16 crops of the embedded CIFAR-10, with its PyTorch
twin: the shared set-up of the tests that compare invjax's attacks with torchattacks'.

A random network is almost constant on real images (every attack would fail or trivially
succeed), so the model is trained a few dozen to a few hundred Adam steps on crops of the
embedded mini CIFAR-10 training set. The test images are crops of the embedded test set,
labelled with the model's own predictions (clean accuracy 100%, so robust accuracy measures
the attack). The weights are copied into `bench/torch_cnn.py`'s PyTorch SmallCNN (`twins`).
torch is imported inside `tiny_cnn` only (through `bench.torch_cnn`): callers
`pytest.importorskip("torch")` first.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from invjax import data
from invjax._src import compilation
from invjax.nets import cnn

SAMPLERS = ("generator", "legacy")
JITS = {"jax": jax.jit, "invjax": compilation.jit}


class TinyCNN(NamedTuple):
  """The trained model on both sides and the test images.

  fn: jitted JAX `logits_fn`; x: float [n, 16, 16, 3] crops in [0, 1]; y: int32 [n] the
  model's predictions; tmodel: the frozen PyTorch twin; xt / yt: x as NCHW float and y as
  int64 tensors; params: the Flax variables; diff: the largest logit difference of the two
  models on x.
  """
  fn: Callable
  x: jax.Array
  y: jax.Array
  tmodel: Any
  xt: Any
  yt: Any
  params: Any
  diff: float


def train(*, widths: Sequence[int], steps: int, learning_rate: float,
          batch_size: Optional[int] = None, num_train: Optional[int] = None,
          sampler: str = "generator", seed: int = 0, crop: slice = slice(8, 24),
          jit: str = "jax"):
  """`(model, params)`: SmallCNN(widths) after `steps` Adam steps of mean cross-entropy.

  The first `num_train` training crops (None: all). `batch_size=None`: every step on all of
  them; otherwise `steps` minibatches of uniformly drawn indices (with replacement), all drawn
  up front from `np.random.default_rng(seed).integers` (`sampler="generator"`) or
  `np.random.RandomState(seed).randint` ("legacy"). Initialised from `PRNGKey(0)`; the step
  compiled with `jax.jit` (`jit="jax"`) or `invjax._src.compilation.jit` ("invjax"), which
  differ in the CPU convolution library, hence in the last float bits of the weights.
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
  train_ds = data.load("cifar10_mini", "train")
  end = len(train_ds.y) if num_train is None else num_train
  xt, yt = data.to_float(train_ds.x[:end, crop, crop]), jnp.asarray(train_ds.y[:end])
  model = cnn.SmallCNN(widths=tuple(widths))
  params = cnn.init(model, jax.random.PRNGKey(0), xt.shape[1:])
  opt = optax.adam(learning_rate)
  ce = lambda p, xb, yb: optax.softmax_cross_entropy_with_integer_labels(
      model.apply(p, xb), yb).mean()

  @JITS[jit]
  def step(p, s, idx):
    xb, yb = (xt, yt) if idx is None else (xt[idx], yt[idx])
    u, s = opt.update(jax.grad(ce)(p, xb, yb), s, p)
    return optax.apply_updates(p, u), s

  if batch_size is None:
    batches = [None] * steps
  elif sampler == "generator":
    batches = np.random.default_rng(seed).integers(0, end, (steps, batch_size))
  else:
    batches = np.random.RandomState(seed).randint(0, end, (steps, batch_size))
  state = opt.init(params)
  for idx in batches:
    params, state = step(params, state, idx)
  return model, params


def tiny_cnn(*, num_images: int, crop: slice = slice(8, 24), **train_kwargs) -> TinyCNN:
  """`train(crop=crop, **train_kwargs)`, the first `num_images` test crops labelled by the
  model, and the PyTorch twin (`bench.torch_cnn.twins`)."""
  from bench import torch_cnn  # pylint: disable=g-import-not-at-top

  model, params = train(crop=crop, **train_kwargs)
  fn = jax.jit(cnn.logits_fn(model, params))
  x = data.to_float(data.load("cifar10_mini", "test").x[:num_images, crop, crop])
  y = jnp.argmax(fn(x), 1).astype(jnp.int32)
  _, tmodel, xt, yt, diff = torch_cnn.twins(model, params, x, y)
  return TinyCNN(fn, x, y, tmodel, xt, yt, params, diff)
