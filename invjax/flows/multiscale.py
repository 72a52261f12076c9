"""Multi-scale flows (RealNVP / Glow): factor out half the channels after each level.

`MultiScale(levels, image_shape)` runs `levels[0], ..., levels[L-1]` (each a flow
layer, usually a `Chain`, that may contain `Squeeze` layers). After every level
but the last, the current tensor `h` (`[B, H_i, W_i, C_i]`) is split along the
channels: `h[..., :C_i // 2]` continues to the next level and
`z_i = h[..., C_i // 2:]` is factored out; the last level's whole output is `z_L`.

Output layout (the contract for every multi-scale model in invjax): `y` is a FLAT
latent `[B, H*W*C]` = `concat([z_1.reshape(B, -1), ..., z_L.reshape(B, -1)], 1)`,
each `z_i` flattened in row-major `(H_i, W_i, C_i')` order. `latent_shapes()`
gives the `(H_i, W_i, C_i')` of each part; `inverse` takes the flat vector and
knows the image shape from `image_shape`. Every `z_i` has a standard-normal prior
(`log p(x) = standard_normal_logpdf(y) + log_det`, see `log_prob`).

Helpers:
  * `standard_normal_logpdf(z)`: `sum_k log N(z_k; 0, 1)` per example (all axes but 0).
  * `bits_per_dim(log_px, num_dims, num_bins=256)`: the discrete-data bits/dim.
    Convention: images are `k / 256` with `k` in `{0..255}`, dequantised with uniform
    noise, `x = (k + u) / 256`, `u ~ U[0, 1)` (`uniform_dequantize`), so `x` in
    `[0, 1)`. `log_px` is the log-density of `x` on `[0, 1]^D`; the density of the
    dequantised data on the `[0, 256)^D` scale is `p(x) / 256^D`, which gives
    `bpd = -(log_px - D * log(256)) / (D * log 2)` (a variational upper bound on
    the discrete model's bits/dim, the number RealNVP / Glow papers report).
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from invjax._src import checks
from invjax.flows.chain import Chain
from invjax.flows.squeeze import Squeeze, squeezed_shape


def standard_normal_logpdf(z: jnp.ndarray) -> jnp.ndarray:
  """`sum log N(z; 0, I)` over all axes but the first: `[B, ...] -> [B]`."""
  z = z.reshape(z.shape[0], -1)
  return -0.5 * jnp.sum(z * z, axis=1) - 0.5 * z.shape[1] * math.log(2.0 * math.pi)


def bits_per_dim(log_px, num_dims: int, num_bins: int = 256):
  """Bits per dimension of `num_bins`-level data from the density `log_px` on `[0, 1]^D`.

  `bpd = -(log_px - num_dims * log(num_bins)) / (num_dims * log 2)`; see module docstring.

  Args:
    log_px: log-density of the dequantised data scaled to `[0, 1]`, any shape (e.g. `[B]`).
    num_dims: the number of dimensions `D` (e.g. `32 * 32 * 3`).
    num_bins: number of discrete levels per dimension (256 for 8-bit images).

  Returns:
    bits/dim, same shape as `log_px`.
  """
  checks.check_positive(num_dims, "num_dims")
  checks.check_positive(num_bins, "num_bins")
  return -(log_px - num_dims * math.log(num_bins)) / (num_dims * math.log(2.0))


def uniform_dequantize(key, x_uint8, num_bins: int = 256) -> jnp.ndarray:
  """`(x + u) / num_bins` with `u ~ U[0, 1)` iid: uint8 images -> float32 in `[0, 1)`."""
  if not jnp.issubdtype(jnp.result_type(x_uint8), jnp.integer):
    raise checks.InvjaxError(
        f"x_uint8 must hold integer pixel levels, got dtype {jnp.result_type(x_uint8)}")
  u = jax.random.uniform(key, jnp.shape(x_uint8), jnp.float32)
  return (jnp.asarray(x_uint8, jnp.float32) + u) / num_bins


def _out_shape(layer, shape):
  """Event shape after `layer`: only `Squeeze` (possibly inside a `Chain`) changes it."""
  if isinstance(layer, Squeeze):
    return squeezed_shape(shape, layer.factor)
  if isinstance(layer, Chain):
    for sub in layer.layers:
      shape = _out_shape(sub, shape)
  return shape


def multiscale_latent_shapes(levels, image_shape) -> Tuple[Tuple[int, int, int], ...]:
  """The `(H_i, W_i, C_i')` of each factored-out part `z_i`, in order."""
  shape = tuple(image_shape)
  out = []
  for i, level in enumerate(levels):
    shape = _out_shape(level, shape)
    h, w, c = shape
    if i < len(levels) - 1:
      if c < 2:
        raise checks.InvjaxError(
            f"level {i} outputs {c} channel(s); the split needs at least 2 (add a Squeeze)")
      out.append((h, w, c - c // 2))
      shape = (h, w, c // 2)
    else:
      out.append(shape)
  return tuple(out)


class MultiScale(nn.Module):
  """Multi-scale flow: levels with channel splits, flat latent output (module docstring).

  Attributes:
    levels: the flow of each level (e.g. `Chain([Squeeze(), ActNorm(), ...])`).
    image_shape: the input event shape `(H, W, C)`.
  """
  levels: Sequence[nn.Module]
  image_shape: Tuple[int, int, int]

  def latent_shapes(self):
    return multiscale_latent_shapes(self.levels, self.image_shape)

  def _check(self, v, name, shape):
    checks.check_flow_input(self, v, name)
    checks.check_shape(v, (None,) + tuple(shape), name)

  def __call__(self, x):
    """`x` `[B, H, W, C]` -> `(y [B, H*W*C] flat latent, log_det [B])`."""
    self._check(x, "x", self.image_shape)
    self.latent_shapes()  # Validates the level structure (each split needs >= 2 channels).
    total = jnp.zeros((x.shape[0],), jnp.result_type(x))
    parts = []
    h = x
    for i, level in enumerate(self.levels):
      h, log_det = level(h)
      total = total + log_det
      if i < len(self.levels) - 1:
        c = h.shape[-1]
        parts.append(h[..., c // 2:].reshape(x.shape[0], -1))
        h = h[..., :c // 2]
      else:
        parts.append(h.reshape(x.shape[0], -1))
    return jnp.concatenate(parts, axis=1), total

  def inverse(self, y):
    """`y` `[B, H*W*C]` flat latent -> `(x [B, H, W, C], log_det_inv [B])`."""
    dim = int(np.prod(self.image_shape))
    self._check(y, "y", (dim,))
    shapes = self.latent_shapes()
    sizes = [int(np.prod(s)) for s in shapes]
    offsets = np.cumsum([0] + sizes)
    b = y.shape[0]
    zs = [y[:, offsets[i]:offsets[i + 1]].reshape((b,) + shapes[i]) for i in range(len(shapes))]
    total = jnp.zeros((b,), jnp.result_type(y))
    h = zs[-1]
    for i in reversed(range(len(self.levels))):
      if i < len(self.levels) - 1:
        h = jnp.concatenate([h, zs[i]], axis=-1)
      h, log_det = self.levels[i].inverse(h)
      total = total + log_det
    return h, total

  def log_prob(self, x):
    """`log p(x) = standard_normal_logpdf(z) + log_det`, shape `[B]` (nats, density of x)."""
    z, log_det = self(x)
    return standard_normal_logpdf(z) + log_det
