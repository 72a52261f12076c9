"""Invertible 1x1 convolution (Glow), LU-parametrised so it cannot become singular.

Per pixel, `y = W x` with `W = P L (U + diag(exp(log_s)))` (`[C, C]`):
  * `P`: a fixed permutation (the channel reversal; static, no variable),
  * `L`: unit lower-triangular (parameter `lower`, strictly-lower part used),
  * `U`: strictly upper-triangular (parameter `upper`, strictly-upper part used),
  * `log_s`: the log of the (positive) diagonal of the upper factor.
`det W = +-prod(exp(log_s)) != 0` for any finite parameters, so the layer is
always invertible, and `log_det = H * W * sum(log_s)` (shape `[batch]`).

Initialisation: `W` starts as a random rotation `Q` (Haar-distributed,
`det Q = +1` up to the sign of `P`): we take the pivoted LU `Q D = Pq L U'` of `Q D`
(`D` a sign diagonal chosen so that `diag(U') > 0`) and set `W0 = P L U'`, which
equals `P Pq^T Q D`, itself a rotation. So the initial `log_s` has
`sum(log_s) = 0` and the layer preserves volume at init, as in Glow.
The sign of the diagonal is fixed to +1 (Glow keeps its sign fixed too), so
no non-trainable variable is needed: all variables live in `params`.

Inputs are NHWC `[batch, H, W, C]` or vectors `[batch, C]` (then an invertible
dense linear layer with `log_det = sum(log_s)`). The matrix products use
`Precision.HIGHEST` so the round trip stays exact on GPU/TPU (no TF32/bf16).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.scipy.linalg

from invjax._src import checks
from invjax.flows.chain import pixelwise_log_det

_HIGHEST = jax.lax.Precision.HIGHEST


def _lu_init(key, c, dtype):
  """Returns (lower, upper, log_s) such that P L (U + diag(exp(log_s))) is a rotation."""
  q, r = jnp.linalg.qr(jax.random.normal(key, (c, c), jnp.float32))
  q = q * jnp.sign(jnp.diag(r))[None, :]  # Haar-distributed orthogonal matrix.
  _, lower, upper = jax.scipy.linalg.lu(q)
  d = jnp.sign(jnp.diag(upper))
  d = jnp.where(d == 0, 1.0, d)
  upper = upper * d[None, :]  # Q D = Pq L (U D): positive diagonal.
  log_s = jnp.log(jnp.abs(jnp.diag(upper)))
  return (jnp.tril(lower, -1).astype(dtype), jnp.triu(upper, 1).astype(dtype),
          log_s.astype(dtype))


class Conv1x1(nn.Module):
  """LU-parametrised invertible 1x1 convolution (see module docstring)."""

  @nn.compact
  def _factors(self, c, dtype):
    if self.has_variable("params", "log_s"):
      have = self.get_variable("params", "log_s").shape[0]
      if have != c:
        raise checks.InvjaxError(
            f"Conv1x1 was initialised for {have} channels, got input with {c} channels")
    if self.is_initializing() and not self.has_variable("params", "log_s"):
      lower0, upper0, log_s0 = _lu_init(self.make_rng("params"), c, dtype)
    else:
      lower0 = upper0 = log_s0 = None
    lower = self.param("lower", lambda _: lower0)
    upper = self.param("upper", lambda _: upper0)
    log_s = self.param("log_s", lambda _: log_s0)
    eye = jnp.eye(c, dtype=dtype)
    l = jnp.tril(lower, -1) + eye
    u = jnp.triu(upper, 1) + jnp.diag(jnp.exp(log_s))
    return l, u, log_s

  def _check(self, x, name):
    checks.check_flow_input(self, x, name, rank=(2, 4))

  def weight(self, c: int, dtype=jnp.float32):
    """The dense `[C, C]` matrix `W` (`y = W x` per pixel)."""
    l, u, _ = self._factors(c, dtype)
    return jnp.matmul(l, u, precision=_HIGHEST)[::-1]  # P = channel reversal.

  def __call__(self, x):
    """`x` `[B, H, W, C]` or `[B, C]` -> `(W x per pixel, log_det [B])`."""
    self._check(x, "x")
    c = x.shape[-1]
    l, u, log_s = self._factors(c, jnp.result_type(x))
    w = jnp.matmul(l, u, precision=_HIGHEST)[::-1]
    y = jnp.einsum("...k,ck->...c", x, w, precision=_HIGHEST)
    return y, pixelwise_log_det(x, jnp.sum(log_s))

  def inverse(self, y):
    """`x = U^-1 L^-1 P^T y` per pixel (triangular solves); `log_det_inv = -log_det`."""
    self._check(y, "y")
    c = y.shape[-1]
    l, u, log_s = self._factors(c, jnp.result_type(y))
    eye = jnp.eye(c, dtype=jnp.result_type(y))
    l_inv = jax.scipy.linalg.solve_triangular(l, eye, lower=True, unit_diagonal=True)
    u_inv = jax.scipy.linalg.solve_triangular(u, eye, lower=False)
    w_inv = jnp.matmul(u_inv, l_inv, precision=_HIGHEST)[:, ::-1]  # (P L U)^-1 = U^-1 L^-1 P^T.
    x = jnp.einsum("...k,ck->...c", y, w_inv, precision=_HIGHEST)
    return x, -pixelwise_log_det(y, jnp.sum(log_s))
