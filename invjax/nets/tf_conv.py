"""TensorFlow "SAME" 2-D convolutions (dense, 1x1, depthwise) written the way XLA:CPU runs fast.

`conv_same(x, kernel, stride, depthwise)` has the result of `lax.conv_general_dilated(...,
padding="SAME", feature_group_count=C if depthwise else 1)` with TensorFlow's placement of the
extra pixel of an even-sized strided convolution (bottom/right). XLA:CPU's grouped (depthwise)
convolution is slow, so `depthwise_conv` is a sum of shifted, per-channel-scaled windows with a
hand-written VJP; a 1x1 convolution is a matmul; other kernels go to
`invjax._src.conv.conv_general_dilated`. Used by `invjax.nets.efficientnet`.
"""
from __future__ import annotations

import functools
from typing import Tuple

import jax
import jax.numpy as jnp

from invjax._src import conv


def _same_pad(x: jax.Array, k: int, stride: int) -> Tuple[jax.Array, int, int]:
  """Zero-pads NHWC `x` as TensorFlow "SAME" does; returns (padded, out_h, out_w)."""
  h, w = x.shape[1:3]
  oh, ow = -(-h // stride), -(-w // stride)
  ph, pw = max((oh - 1) * stride + k - h, 0), max((ow - 1) * stride + k - w, 0)
  xp = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
  return xp, oh, ow


def _shifted_windows(x: jax.Array, k: int, stride: int):
  """Yields ((i, j), window): window[n, y, x, c] = padded x[n, stride*y + i, stride*x + j, c]."""
  xp, oh, ow = _same_pad(x, k, stride)
  for i in range(k):
    for j in range(k):
      yield (i, j), jax.lax.slice(
          xp, (0, i, j, 0), (xp.shape[0], i + (oh - 1) * stride + 1,
                             j + (ow - 1) * stride + 1, xp.shape[3]), (1, stride, stride, 1))


def _depthwise_sum(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  out = None
  for (i, j), window in _shifted_windows(x, kernel.shape[0], stride):
    term = window * kernel[i, j, 0]
    out = term if out is None else out + term
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """Depthwise "SAME" convolution `[N, H, W, C]` * `[k, k, 1, C]` -> `[N, H/s, W/s, C]` (ceil).

  A sum of k*k shifted, per-channel-scaled windows. Its hand-written VJP is the
  same kind of sum over the (stride-dilated) cotangent, faster on CPU than autodiff's
  strided-slice transposes for stride 2.
  """
  return _depthwise_sum(x, kernel, stride)


def _depthwise_fwd(x, kernel, stride):
  return _depthwise_sum(x, kernel, stride), (x, kernel)


def _depthwise_bwd(stride, residuals, dy):
  x, kernel = residuals
  k = kernel.shape[0]
  n, h, w, c = x.shape
  oh, ow = dy.shape[1:3]
  ph, pw = max((oh - 1) * stride + k - h, 0), max((ow - 1) * stride + k - w, 0)
  hp, wp = h + ph, w + pw  # padded input size
  # dy dilated by the stride and padded so that d(padded x)[p] = sum_i dyp[p + k - 1 - i] k[i].
  dyp = jax.lax.pad(dy, jnp.zeros((), dy.dtype), (
      (0, 0, 0), (k - 1, hp - (oh - 1) * stride - 1, stride - 1),
      (k - 1, wp - (ow - 1) * stride - 1, stride - 1), (0, 0, 0)))
  dxp = None
  for i in range(k):
    for j in range(k):
      term = jax.lax.slice(dyp, (0, k - 1 - i, k - 1 - j, 0),
                           (n, k - 1 - i + hp, k - 1 - j + wp, c)) * kernel[i, j, 0]
      dxp = term if dxp is None else dxp + term
  dx = dxp[:, ph // 2:ph // 2 + h, pw // 2:pw // 2 + w]
  dk = jnp.stack([jnp.sum(window * dy, axis=(0, 1, 2))
                  for _, window in _shifted_windows(x, k, stride)]).reshape(kernel.shape)
  return dx, dk.astype(kernel.dtype)


depthwise_conv.defvjp(_depthwise_fwd, _depthwise_bwd)


def conv_same(x: jax.Array, kernel: jax.Array, stride: int = 1,
              depthwise: bool = False) -> jax.Array:
  """2-D convolution of NHWC `x` with an HWIO `kernel`, TensorFlow "SAME" padding.

  Same result as `lax.conv_general_dilated(..., padding="SAME",
  feature_group_count=C if depthwise else 1)`, computed the way that is fast on
  CPU: XLA's grouped (depthwise) convolution is much slower there than
  `depthwise_conv`'s sum of shifted windows, and a 1x1 convolution is a matmul.

  Args:
    x: `[N, H, W, C]`.
    kernel: `[k, k, C, F]`, or `[k, k, 1, C]` when `depthwise`.
    stride: spatial stride (output size ceil(H / stride)).
    depthwise: one filter per channel.

  Returns:
    `[N, ceil(H / stride), ceil(W / stride), F]`.
  """
  k = kernel.shape[0]
  if depthwise:
    return depthwise_conv(x, kernel, stride)
  if k == 1:
    return jnp.einsum("nhwc,cf->nhwf", x[:, ::stride, ::stride], kernel[0, 0])
  return conv.conv_general_dilated(
      x, kernel, window_strides=(stride, stride), padding="SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
