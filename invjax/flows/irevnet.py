"""i-RevNet (Jacobsen, Smeulders & Oyallon 2018): a bijective, volume-preserving network.

`IRevNetBlock`: split `x` `[B, H, W, C]` into halves `x1 = x[..., :C/2]`,
`x2 = x[..., C/2:]`; with `downsample=True` squeeze each half separately
(`invjax.flows.squeeze.squeeze2d`, `[B, H/2, W/2, 2C]` per half), which keeps the
two-halves structure and the map bijective (no zero-channel injection). Then

  y1 = x2 + F(x1),   y2 = x1,   y = concat([y1, y2], -1)

with `F` a small conv residual branch (3x3 conv, ReLU, 3x3 conv, ReLU, 3x3 conv),
which needs no invertibility constraint. The inverse is `x1 = y2`,
`x2 = y1 - F(y2)` (then unsqueeze each half). The swap of halves means the next
block's `F` acts on the other half. Every step is volume preserving, so
`log_det = 0` exactly (shape `[batch]`).

`IRevNet`: an initial `squeeze2d` (a pad-free bijective pixel reshuffle,
`[B, H, W, C] -> [B, H/2, W/2, 4C]`, so that odd `C` such as RGB can be split),
then stages of blocks; the first block of every stage but the first downsamples.
The output `z` is NHWC with exactly as many entries as the input, e.g.
`[B, 32, 32, 3] -> [B, 4, 4, 192]` for `num_blocks=(2, 2, 2)`.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from invjax._src import checks
from invjax._src import conv
from invjax.flows.chain import apply_layers, invert_layers
from invjax.flows.squeeze import squeeze2d, unsqueeze2d


class ResidualBranch(nn.Module):
  """F: `[B, H, W, c] -> [B, H, W, c]`, 3x3 conv(hidden), ReLU, 3x3 conv(hidden), ReLU, 3x3 conv."""
  hidden: int

  @nn.compact
  def __call__(self, x):
    h = nn.relu(conv.Conv(self.hidden, (3, 3), padding="SAME")(x))
    h = nn.relu(conv.Conv(self.hidden, (3, 3), padding="SAME")(h))
    return conv.Conv(x.shape[-1], (3, 3), padding="SAME")(h)


def _check_even_channels(x, name):
  if x.shape[-1] % 2:
    raise checks.InvjaxError(
        f"{name} must have an even number of channels to split into two halves, got "
        f"shape {tuple(x.shape)}")


class IRevNetBlock(nn.Module):
  """One i-RevNet block (module docstring); `log_det = 0`.

  Attributes:
    hidden: width of the residual branch F.
    downsample: squeeze each half by 2 at the block start (`[B, H, W, C] -> [B, H/2, W/2, 4C]`).
  """
  hidden: int = 32
  downsample: bool = False

  def setup(self):
    self.branch = ResidualBranch(self.hidden)

  def _check(self, v, name):
    checks.check_flow_input(self, v, name, rank=4)
    _check_even_channels(v, name)

  def __call__(self, x):
    """`x` `[B, H, W, C]` -> `(y, zeros [B])`; `y` is `[B, H/2, W/2, 4C]` if downsampling."""
    self._check(x, "x")
    x1, x2 = jnp.split(x, 2, axis=-1)
    if self.downsample:
      x1, x2 = squeeze2d(x1), squeeze2d(x2)
    y = jnp.concatenate([x2 + self.branch(x1), x1], axis=-1)
    return y, jnp.zeros((x.shape[0],), jnp.result_type(x))

  def inverse(self, y):
    """`y` -> `(x, zeros [B])`."""
    self._check(y, "y")
    y1, y2 = jnp.split(y, 2, axis=-1)
    x1, x2 = y2, y1 - self.branch(y2)
    if self.downsample:
      x1, x2 = unsqueeze2d(x1), unsqueeze2d(x2)
    return jnp.concatenate([x1, x2], axis=-1), jnp.zeros((y.shape[0],), jnp.result_type(y))


class IRevNet(nn.Module):
  """Bijective i-RevNet: initial squeeze, stages of `IRevNetBlock`s (module docstring).

  Attributes:
    num_blocks: blocks per stage; stage `s > 0` starts with a downsampling block.
    hidden: width of each block's residual branch (doubled at every stage).
    init_squeeze: start with a 2x2 space-to-depth reshuffle (needed for odd `C`).
  """
  num_blocks: Sequence[int] = (2, 2, 2)
  hidden: int = 32
  init_squeeze: bool = True

  def setup(self):
    blocks = []
    for s, n in enumerate(self.num_blocks):
      for k in range(n):
        blocks.append(IRevNetBlock(hidden=self.hidden * 2**s, downsample=(s > 0 and k == 0)))
    self.blocks = blocks

  def _check(self, v, name):
    checks.check_flow_input(self, v, name, rank=4)

  def __call__(self, x):
    """`x` `[B, H, W, C]` -> `(z [B, H', W', C'] with H'W'C' = HWC, zeros [B])`."""
    self._check(x, "x")
    downsamples = sum(1 for b in self.blocks if b.downsample) + int(self.init_squeeze)
    h, w = x.shape[1:3]
    if h % 2**downsamples or w % 2**downsamples:
      raise checks.InvjaxError(
          f"x must have height and width divisible by 2**{downsamples} = {2**downsamples} "
          f"(the number of squeezes of this IRevNet), got shape {tuple(x.shape)}")
    if self.init_squeeze:
      x = squeeze2d(x)
    _check_even_channels(x, "x (after the initial squeeze)" if self.init_squeeze else "x")
    return apply_layers(self.blocks, x)

  def inverse(self, z):
    """`z` -> `(x, zeros [B])`, the exact inverse of `__call__`."""
    self._check(z, "z")
    z, total = invert_layers(self.blocks, z)
    if self.init_squeeze:
      z = unsqueeze2d(z)
    return z, total
