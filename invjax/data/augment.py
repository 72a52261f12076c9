"""Training-time augmentation of NHWC float images: random flips and padded random crops,
Gaussian noise.

The standard CIFAR-10 recipe (He et al. 2016): a horizontal flip with probability 1/2 and a
random `size x size` crop of the image reflect-padded by `pad` pixels on each side. Pure
function of a PRNG key, jit-able, used by the classifier, teacher and distillation training.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from invjax._src.checks import InvjaxError


def flip_and_crop(key: jax.Array, x: jax.Array, *, pad: int = 4) -> jax.Array:
  """Random horizontal flips and `pad`-pixel reflect-padded random crops of `x` [B, H, W, C].

  Returns an array of the shape of `x`; each example draws its own flip and offsets.
  """
  if x.ndim != 4:
    raise InvjaxError(f"flip_and_crop expects NHWC images [B, H, W, C], got shape {x.shape}")
  if pad < 0:
    raise InvjaxError(f"pad must be >= 0, got {pad}")
  b, h, w, c = x.shape
  k_flip, k_crop = jax.random.split(key)
  flip = jax.random.bernoulli(k_flip, 0.5, (b,))
  x = jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
  offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * pad + 1)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
  return jax.vmap(crop)(padded, offsets)


def gaussian_noise(key: jax.Array, x: jax.Array, *, sigma: float) -> jax.Array:
  """`x + sigma * N(0, I)`: the noise augmentation of randomized smoothing's base classifier
  (Cohen, Rosenfeld & Kolter 2019 train it on the noise it will be smoothed with). Not clipped
  to the pixel range, as the smoothed classifier's noise is not."""
  if not sigma >= 0:
    raise InvjaxError(f"sigma must be >= 0, got {sigma}")
  return x + sigma * jax.random.normal(key, x.shape, x.dtype)
