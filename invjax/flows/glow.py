"""Glow (Kingma & Dhariwal 2018) and RealNVP (Dinh et al. 2017) multi-scale flows.

Both map NHWC images `x` `[B, H, W, C]` to a FLAT latent `y` `[B, H*W*C]` with
`log_det = log|det dy/dx|` `[B]`, following the layout of
`invjax.flows.multiscale.MultiScale` (`y = concat(z_1, ..., z_L)`, each part
flattened row-major; `latent_shapes()` gives their shapes). `inverse` takes the flat
latent. `log_prob(x)` is the log-density under a standard-normal prior; turn it
into bits/dim with `invjax.flows.multiscale.bits_per_dim`.

Glow level (`num_levels` of them): `Squeeze`, then `num_steps` x (`ActNorm`,
`Conv1x1`, coupling on the channel split); half the channels are factored out
after every level but the last. RealNVP level (the paper's counts, configurable): 3 checkerboard
couplings (alternating parity), `Squeeze`, 3 channel couplings (alternating parity),
split; the last level is 4 checkerboard couplings (no squeeze). RealNVP's batch norm is replaced by
`ActNorm` (`actnorm=True`, data-dependent init) before each coupling.

Paper-size CIFAR-10 Glow is `Glow((32, 32, 3), num_levels=3, num_steps=32,
hidden=512)`; a CPU smoke model is `Glow((32, 32, 3), num_levels=2, num_steps=4,
hidden=32)`. Initialise with `model.init(key, x_batch)` on real data (ActNorm's
data-dependent init), e.g. `x - 0.5` for dequantised pixels in `[0, 1)`.
"""
from __future__ import annotations

from typing import Tuple

import flax.linen as nn

from invjax._src import checks
from invjax.flows.actnorm import ActNorm
from invjax.flows.chain import Chain
from invjax.flows.conv1x1 import Conv1x1
from invjax.flows.coupling import AdditiveCoupling, AffineCoupling
from invjax.flows.multiscale import MultiScale
from invjax.flows.squeeze import Squeeze

COUPLINGS = {"affine": AffineCoupling, "additive": AdditiveCoupling}


class _MultiScaleModel(nn.Module):
  """A `MultiScale` flow built in `setup` from `_levels()`; validates inputs at the top."""
  image_shape: Tuple[int, int, int]

  def _levels(self):
    raise NotImplementedError

  def setup(self):
    if len(self.image_shape) != 3:
      raise checks.InvjaxError(f"image_shape must be (H, W, C), got {self.image_shape}")
    self.flow = MultiScale(levels=tuple(self._levels()), image_shape=tuple(self.image_shape))

  def _make_coupling(self, mask, flip):
    if self.coupling not in COUPLINGS:
      raise checks.InvjaxError(
          f"coupling must be one of {tuple(COUPLINGS)}, got {self.coupling!r}")
    kwargs = dict(mask=mask, flip=flip, hidden=self.hidden)
    if self.coupling == "affine":
      kwargs["scale_fn"] = self.scale_fn
    return COUPLINGS[self.coupling](**kwargs)

  def _check(self, v, name):
    checks.check_flow_input(self, v, name)

  def latent_shapes(self):
    """The `(H_i, W_i, C_i)` of each factored-out part of the flat latent, in order."""
    return self.flow.latent_shapes()

  def __call__(self, x):
    """`x` `[B, H, W, C]` -> `(y [B, H*W*C], log_det [B])`."""
    self._check(x, "x")
    return self.flow(x)

  def inverse(self, y):
    """`y` `[B, H*W*C]` -> `(x [B, H, W, C], log_det_inv [B])`."""
    self._check(y, "y")
    return self.flow.inverse(y)

  def log_prob(self, x):
    """`log p(x)` (nats) under a standard-normal prior on the flat latent, shape `[B]`."""
    self._check(x, "x")
    return self.flow.log_prob(x)


class Glow(_MultiScaleModel):
  """Glow: levels of [squeeze, K x (ActNorm, Conv1x1, coupling)] with splits.

  Attributes:
    image_shape: input event shape `(H, W, C)`; `H`, `W` divisible by `2**num_levels`.
    num_levels: number of levels L (a split after each but the last).
    num_steps: flow steps K per level.
    hidden: conditioner width.
    coupling: "affine" or "additive".
    scale_fn: affine scale parametrisation (see `invjax.flows.coupling.SCALE_FNS`).
  """
  num_levels: int = 3
  num_steps: int = 32
  hidden: int = 512
  coupling: str = "affine"
  scale_fn: str = "tanh_exp"

  def _levels(self):
    levels = []
    for _ in range(self.num_levels):
      layers = [Squeeze()]
      for _ in range(self.num_steps):
        layers += [ActNorm(), Conv1x1(), self._make_coupling("channel", False)]
      levels.append(Chain(layers))
    return levels


class RealNVP(_MultiScaleModel):
  """RealNVP: checkerboard / channel affine couplings, squeezes and splits, no 1x1 conv.

  Attributes:
    image_shape: input event shape `(H, W, C)`; `H`, `W` divisible by `2**(num_levels-1)`.
    num_levels: number of levels (scales).
    hidden: conditioner width.
    coupling: "affine" or "additive".
    scale_fn: affine scale parametrisation.
    actnorm: put an `ActNorm` before each coupling (RealNVP used batch norm).
    num_checkerboard: checkerboard couplings at the start of every level but the last.
    num_channel: channel couplings after the squeeze of every level but the last.
    num_final: checkerboard couplings of the last level.
  """
  num_levels: int = 3
  hidden: int = 64
  coupling: str = "affine"
  scale_fn: str = "tanh_exp"
  actnorm: bool = True
  num_checkerboard: int = 3
  num_channel: int = 3
  num_final: int = 4

  def _step(self, mask, flip):
    return ([ActNorm()] if self.actnorm else []) + [self._make_coupling(mask, flip)]

  def _levels(self):
    levels = []
    for i in range(self.num_levels):
      layers = []
      last = i == self.num_levels - 1
      for k in range(self.num_final if last else self.num_checkerboard):
        layers += self._step("checkerboard", k % 2 == 1)
      if not last:
        layers.append(Squeeze())
        for k in range(self.num_channel):
          layers += self._step("channel", k % 2 == 1)
      levels.append(Chain(layers))
    return levels
