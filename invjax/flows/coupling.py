"""Affine and additive coupling layers (RealNVP / Glow / NICE) with binary masks.

A binary mask `m` (1 = conditioning part, kept as is) splits the input; a
conditioner network `NN` sees only `m * x` and parametrises an elementwise map of
the other part:

  affine:    y = m * x + (1 - m) * (x + t) * s,   (t, log s) = NN(m * x)
  additive:  y = m * x + (1 - m) * (x + t),       t = NN(m * x)

`log_det = sum((1 - m) * log s)` per example (0 for additive), shape `[batch]`.
The inverse recomputes `NN(m * y) = NN(m * x)` and undoes the map exactly.

Masks (`mask` attribute; `flip=True` swaps the roles of the two parts):
  * NHWC images `[batch, H, W, C]`:
    - "checkerboard": `m[i, j, :] = (i + j) % 2 == 0` (same for every channel);
    - "channel": the first `C // 2` channels condition, the rest are transformed.
  * vectors `[batch, d]` (the dense variant, conditioner an MLP):
    - "checkerboard": even features condition, odd ones are transformed;
    - "channel": the first `d // 2` features condition.

Conditioner: for images a conv net `3x3 conv(hidden) -> ReLU -> 1x1 conv(hidden)
-> ReLU -> 3x3 conv(out)`; for vectors an MLP `Dense(hidden) -> ReLU ->
Dense(hidden) -> ReLU -> Dense(out)`. The last layer is zero-initialised, so
`t = 0` and `log s = 0` at init: with `scale_fn="tanh_exp"` the layer starts at the
identity. Scale parametrisations (`scale_fn`, a registry by name):
  * "tanh_exp" (default): `log s = bound * tanh(raw / bound)`, i.e. `s` in
    `[exp(-bound), exp(bound)]`; identity at init;
  * "sigmoid": Glow's `s = sigmoid(raw + 2)`, `s` in `(0, 1)`; `s = 0.88` at init
    (not the identity, as in Glow).
"""
from __future__ import annotations

from typing import Callable, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from invjax._src import checks
from invjax._src import conv

MASKS = ("checkerboard", "channel")


def _tanh_exp(raw, bound):
  return bound * jnp.tanh(raw / bound)


def _sigmoid(raw, bound):
  del bound
  return jax.nn.log_sigmoid(raw + 2.0)


# name -> f(raw, bound) returning log s.
SCALE_FNS: Dict[str, Callable] = {"tanh_exp": _tanh_exp, "sigmoid": _sigmoid}


def make_mask(shape, mask: str, flip: bool = False) -> np.ndarray:
  """Binary conditioning mask (1 = kept) broadcastable to an event of `shape`.

  Args:
    shape: the event shape, `(H, W, C)` for images or `(d,)` for vectors.
    mask: "checkerboard" or "channel" (see module docstring).
    flip: swap the two parts.

  Returns:
    float32 numpy array of shape `(H, W, 1)` (checkerboard images), `(1, 1, C)`
    (channel images) or `(d,)` (vectors).
  """
  if mask not in MASKS:
    raise checks.InvjaxError(f"mask must be one of {MASKS}, got {mask!r}")
  if len(shape) == 3:
    h, w, c = shape
    if mask == "checkerboard":
      m = ((np.arange(h)[:, None] + np.arange(w)[None, :]) % 2 == 0)[:, :, None]
    else:
      m = (np.arange(c) < c // 2)[None, None, :]
  elif len(shape) == 1:
    (d,) = shape
    m = np.arange(d) % 2 == 0 if mask == "checkerboard" else np.arange(d) < d // 2
  else:
    raise checks.InvjaxError(f"coupling events must have rank 1 or 3, got shape {shape}")
  m = m.astype(np.float32)
  m = 1.0 - m if flip else m
  return m


class Conditioner(nn.Module):
  """The coupling's conditioner: `[B, ..., C] -> [B, ..., multiplier * C]`.

  Images `[B, H, W, C]`: 3x3 conv(hidden), ReLU, 1x1 conv(hidden), ReLU, 3x3 conv.
  Vectors `[B, d]`: Dense(hidden), ReLU, Dense(hidden), ReLU, Dense.
  The last layer is zero-initialised (kernel and bias), so the output starts at 0.
  """
  hidden: int
  multiplier: int

  @nn.compact
  def __call__(self, x):
    out = self.multiplier * x.shape[-1]
    zeros = nn.initializers.zeros
    if x.ndim == 4:
      h = nn.relu(conv.Conv(self.hidden, (3, 3), padding="SAME")(x))
      h = nn.relu(conv.Conv(self.hidden, (1, 1))(h))
      return conv.Conv(out, (3, 3), padding="SAME", kernel_init=zeros, bias_init=zeros)(h)
    h = nn.relu(nn.Dense(self.hidden)(x))
    h = nn.relu(nn.Dense(self.hidden)(h))
    return nn.Dense(out, kernel_init=zeros, bias_init=zeros)(h)


class _Coupling(nn.Module):
  """Shared masking / validation / conditioner logic of the coupling layers."""
  mask: str = "channel"
  flip: bool = False
  hidden: int = 64

  def _check(self, x, name):
    checks.check_flow_input(self, x, name, rank=(2, 4))
    if self.mask not in MASKS:
      raise checks.InvjaxError(f"mask must be one of {MASKS}, got {self.mask!r}")
    if x.shape[-1] < 2 and (x.ndim == 2 or self.mask == "channel"):
      raise checks.InvjaxError(
          f"{name} needs at least 2 {'features' if x.ndim == 2 else 'channels'} for a "
          f"{self.mask!r} coupling, got shape {tuple(x.shape)}")
    if x.ndim == 4 and self.mask == "checkerboard" and x.shape[1] * x.shape[2] < 2:
      raise checks.InvjaxError(
          f"{name} needs at least 2 pixels for a checkerboard coupling, got shape "
          f"{tuple(x.shape)}")

  def _outputs_per_channel(self) -> int:
    raise NotImplementedError

  def setup(self):
    self.conditioner = Conditioner(self.hidden, self._outputs_per_channel())

  def _mask(self, x):
    return jnp.asarray(make_mask(x.shape[1:], self.mask, self.flip), jnp.result_type(x))


class AffineCoupling(_Coupling):
  """Affine coupling `y = m x + (1 - m)(x + t) s`; images `[B, H, W, C]` or vectors `[B, d]`.

  Attributes:
    mask: "checkerboard" or "channel" (see module docstring).
    flip: swap the conditioning and the transformed parts.
    hidden: width of the conditioner network.
    scale_fn: "tanh_exp" (default, identity at init) or "sigmoid" (Glow).
    scale_bound: the bound on `|log s|` for "tanh_exp".
  """
  scale_fn: str = "tanh_exp"
  scale_bound: float = 2.0

  def _outputs_per_channel(self) -> int:
    return 2

  def _shift_log_scale(self, x, m):
    if self.scale_fn not in SCALE_FNS:
      raise checks.InvjaxError(
          f"scale_fn must be one of {tuple(SCALE_FNS)}, got {self.scale_fn!r}")
    h = self.conditioner(x * m)
    shift, raw = jnp.split(h, 2, axis=-1)
    log_scale = SCALE_FNS[self.scale_fn](raw, self.scale_bound) * (1.0 - m)
    return shift * (1.0 - m), log_scale

  def __call__(self, x):
    """`x` -> `(y same shape, log_det [B])`."""
    self._check(x, "x")
    m = self._mask(x)
    shift, log_scale = self._shift_log_scale(x, m)
    y = m * x + (1.0 - m) * ((x + shift) * jnp.exp(log_scale))
    return y, jnp.sum(log_scale.reshape(x.shape[0], -1), axis=1)

  def inverse(self, y):
    """`y` -> `(x, log_det_inv [B])`, `log_det_inv = -log_det(x)`."""
    self._check(y, "y")
    m = self._mask(y)
    shift, log_scale = self._shift_log_scale(y, m)
    x = m * y + (1.0 - m) * (y * jnp.exp(-log_scale) - shift)
    return x, -jnp.sum(log_scale.reshape(y.shape[0], -1), axis=1)


class AdditiveCoupling(_Coupling):
  """Additive (NICE) coupling `y = m x + (1 - m)(x + t)`, volume preserving (`log_det = 0`).

  Attributes:
    mask: "checkerboard" or "channel" (see module docstring).
    flip: swap the conditioning and the transformed parts.
    hidden: width of the conditioner network.
  """

  def _outputs_per_channel(self) -> int:
    return 1

  def __call__(self, x):
    """`x` -> `(y same shape, zeros [B])`."""
    self._check(x, "x")
    m = self._mask(x)
    shift = self.conditioner(x * m) * (1.0 - m)
    return x + shift, jnp.zeros((x.shape[0],), jnp.result_type(x))

  def inverse(self, y):
    """`y` -> `(x, zeros [B])`."""
    self._check(y, "y")
    m = self._mask(y)
    shift = self.conditioner(y * m) * (1.0 - m)
    return y - shift, jnp.zeros((y.shape[0],), jnp.result_type(y))
