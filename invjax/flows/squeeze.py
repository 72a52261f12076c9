"""Space-to-depth squeeze: an invertible (volume-preserving) spatial downsampling.

`squeeze2d` maps `[batch, H, W, C]` to `[batch, H/f, W/f, C*f*f]` by moving each
`f x f` spatial block into the channel axis; `unsqueeze2d` is its exact inverse.
The channel layout of the output is `(row offset, column offset, input channel)`
in row-major order: output channel `(a * f + b) * C + c` holds input pixel
`(f*i + a, f*j + b, c)`. It is a permutation of the entries, so `log|det| = 0`.

Glow / RealNVP use `Squeeze` at the start of each level. i-RevNet uses the same
map as its invertible downsampling: it squeezes each half of the channels
separately (see `invjax.flows.irevnet`), which keeps the channel split bijective.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from invjax._src import checks


def _check_spatial(x, factor: int, name: str) -> None:
  checks.check_rank(x, 4, name)
  _, h, w, _ = x.shape
  if h % factor or w % factor:
    raise checks.InvjaxError(
        f"{name} must have height and width divisible by the squeeze factor {factor}, "
        f"got spatial size {h}x{w} (shape {tuple(x.shape)})")


def squeeze2d(x: jnp.ndarray, factor: int = 2) -> jnp.ndarray:
  """Space-to-depth: `[B, H, W, C] -> [B, H/factor, W/factor, C*factor**2]`."""
  _check_spatial(x, factor, "x")
  b, h, w, c = x.shape
  x = x.reshape(b, h // factor, factor, w // factor, factor, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // factor, w // factor, factor * factor * c)


def unsqueeze2d(y: jnp.ndarray, factor: int = 2) -> jnp.ndarray:
  """Depth-to-space, the inverse of `squeeze2d`: `[B, h, w, C*f*f] -> [B, h*f, w*f, C]`."""
  checks.check_rank(y, 4, "y")
  b, h, w, cc = y.shape
  if cc % (factor * factor):
    raise checks.InvjaxError(
        f"y must have a channel count divisible by factor**2 = {factor * factor} to "
        f"unsqueeze, got {cc} channels (shape {tuple(y.shape)})")
  c = cc // (factor * factor)
  y = y.reshape(b, h, w, factor, factor, c)
  y = y.transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(b, h * factor, w * factor, c)


def squeezed_shape(shape, factor: int = 2):
  """Event shape `(H, W, C)` after `squeeze2d`: `(H/f, W/f, C*f*f)`."""
  h, w, c = shape
  if h % factor or w % factor:
    raise checks.InvjaxError(
        f"image shape {tuple(shape)} has a spatial size not divisible by the squeeze "
        f"factor {factor}")
  return (h // factor, w // factor, c * factor * factor)


class Squeeze(nn.Module):
  """Flow layer wrapping `squeeze2d`: `y = squeeze2d(x)`, `log_det = 0` (shape `[batch]`)."""
  factor: int = 2

  def __call__(self, x):
    checks.check_flow_input(self, x, "x")
    y = squeeze2d(x, self.factor)
    return y, jnp.zeros((x.shape[0],), jnp.result_type(x))

  def inverse(self, y):
    checks.check_flow_input(self, y, "y")
    x = unsqueeze2d(y, self.factor)
    return x, jnp.zeros((y.shape[0],), jnp.result_type(y))
