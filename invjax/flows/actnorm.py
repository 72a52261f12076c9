"""Activation normalisation (Glow, Kingma & Dhariwal 2018) with data-dependent init.

`y = (x + bias) * exp(log_scale)` per channel (last axis). Inputs are NHWC images
`[batch, H, W, C]` or vectors `[batch, C]`. `log_det = H * W * sum(log_scale)` for
images (`sum(log_scale)` for vectors), the same for every example, shape `[batch]`.

Data-dependent initialisation: when the variables are created by `init` through
`__call__`, `bias = -mean(x)` and `log_scale = -log(std(x) + eps)` per channel over
the init batch (all axes but the last), so the output on that batch has per-channel
mean 0 and standard deviation ~1. Initialising through `inverse` (no data for x)
starts at the identity (`bias = 0`, `log_scale = 0`).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from invjax._src import checks
from invjax.flows.chain import pixelwise_log_det


class ActNorm(nn.Module):
  """Per-channel affine normalisation with an exact log-determinant.

  Attributes:
    eps: added to the init-batch standard deviation before taking its log.
  """
  eps: float = 1e-6

  @nn.compact
  def _params(self, x, data_init: bool):
    c = x.shape[-1]
    if self.has_variable("params", "bias"):
      have = self.get_variable("params", "bias").shape[0]
      if have != c:
        raise checks.InvjaxError(
            f"ActNorm was initialised for {have} channels, got input with {c} channels")
    if data_init:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x, axis=axes)
      std = jnp.std(x, axis=axes)
      bias_init = lambda _: -mean
      log_scale_init = lambda _: -jnp.log(std + self.eps)
    else:
      bias_init = lambda _: jnp.zeros((c,), jnp.result_type(x))
      log_scale_init = lambda _: jnp.zeros((c,), jnp.result_type(x))
    bias = self.param("bias", bias_init)
    log_scale = self.param("log_scale", log_scale_init)
    return bias, log_scale

  def _check(self, x, name):
    checks.check_flow_input(self, x, name, rank=(2, 4))

  def __call__(self, x):
    """`x` `[B, H, W, C]` or `[B, C]` -> `(y same shape, log_det [B])`."""
    self._check(x, "x")
    bias, log_scale = self._params(x, data_init=self.is_initializing())
    y = (x + bias) * jnp.exp(log_scale)
    return y, pixelwise_log_det(x, jnp.sum(log_scale))

  def inverse(self, y):
    """`x = y * exp(-log_scale) - bias`; `log_det_inv = -log_det`, shape `[B]`."""
    self._check(y, "y")
    bias, log_scale = self._params(y, data_init=False)
    x = y * jnp.exp(-log_scale) - bias
    return x, -pixelwise_log_det(y, jnp.sum(log_scale))
