"""Spectral normalisation by power iteration, for dense and (true-operator) conv layers.

A spectrally normalised layer rescales its weight so that the operator norm of the
linear map it applies is at most `coeff` (i-ResNet, Behrmann et al. 2019):

    W_sn = W / max(1, sigma / coeff),     sigma ~= ||W||_2 (power iteration).

For a dense layer the operator is the weight matrix. For a convolution it is the
*convolution map itself* on inputs of the shape the layer was initialised with
(padding and strides included), not the reshaped kernel matrix: the power
iteration applies `invjax._src.conv.conv_general_dilated` (lax's convolution) and its exact transpose
(`jax.linear_transpose`).

The power-iteration vector `v` (a unit vector in the layer's input space) lives in
the Flax variable collection `"spectral"`, next to the latest estimate `sigma`:

* at `init`: `n_init_power_iterations` iterations (default 50) from a random start;
* when `"spectral"` is mutable (training, `apply(..., mutable=["spectral"])`):
  `n_power_iterations` iterations (default 5, as in the references) per call;
* otherwise (evaluation): `v` is frozen and `sigma = ||A v||` is recomputed from it.

`sigma` always carries gradient to the weight (`v` is treated as a constant).
Because `sigma = ||A v||` with `||v|| = 1` is a lower bound of the true norm, a
stale `v` means the layer can exceed `coeff`; `converge_spectral_norms` runs many
more iterations (e.g. before evaluating, inverting or certifying a trained model).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from invjax._src import checks
from invjax._src import compilation
from invjax._src import conv

Array = jax.Array

SPECTRAL = "spectral"


def check_coeff(coeff, name: str = "coeff") -> None:
  """Raises `InvjaxError` unless `0 < coeff < 1` (needed for an invertible residual block)."""
  try:
    c = float(coeff)
  except (TypeError, ValueError):
    raise checks.InvjaxError(f"{name} must be a number in (0, 1), got {coeff!r}") from None
  if not 0.0 < c < 1.0:
    raise checks.InvjaxError(
        f"{name} must lie in the open interval (0, 1) so that the residual branch is a "
        f"contraction (Lip(g) <= {name} < 1 makes x + g(x) invertible), got {c}")


def _unit(v: Array, eps: float = 1e-12) -> Array:
  return v / (jnp.sqrt(jnp.sum(v * v)) + eps)


def power_iteration(matvec: Callable[[Array], Array], rmatvec: Callable[[Array], Array],
                    v: Array, n_iterations: int) -> Tuple[Array, Array]:
  """Runs `n_iterations` steps of `v <- A^T A v / ||A^T A v||`.

  Args:
    matvec: `v -> A v`, linear.
    rmatvec: `u -> A^T u`, its transpose.
    v: starting vector in the input space of `A` (any shape).
    n_iterations: number of iterations (static, >= 0).

  Returns:
    `(v, sigma)`: the unit vector after the iterations and `sigma = ||A v||`, a lower
    bound of the largest singular value of `A` that converges to it.
  """
  v = _unit(v)
  if n_iterations > 0:
    v = lax.fori_loop(0, n_iterations, lambda _, w: _unit(rmatvec(matvec(w))), v)
  u = matvec(v)
  return v, jnp.sqrt(jnp.sum(u * u))


class _SpectralLayer(nn.Module):
  """What `SpectralDense` and `SpectralConv` share: their settings (keyword-only but `features`),
  the power-iteration bookkeeping and the normalised kernel + bias."""
  features: int
  _: dataclasses.KW_ONLY
  coeff: float = 0.9
  n_power_iterations: int = 5
  n_init_power_iterations: int = 50
  use_bias: bool = True
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  bias_init: Callable[..., Any] = nn.initializers.zeros

  def _normalise(self, kernel: Array, apply_fn: Callable[[Array, Array], Array],
                 v_shape: Tuple[int, ...]) -> Array:
    """Returns `kernel / max(1, sigma / coeff)` and updates the `"spectral"` collection."""
    check_coeff(self.coeff)
    if self.n_power_iterations < 0 or self.n_init_power_iterations < 0:
      raise checks.InvjaxError(
          f"n_power_iterations and n_init_power_iterations must be >= 0, got "
          f"{self.n_power_iterations} and {self.n_init_power_iterations}")
    v_var = self.variable(
        SPECTRAL, "v",
        lambda: _unit(jax.random.normal(self.make_rng("params"), v_shape, kernel.dtype)))
    sigma_var = self.variable(SPECTRAL, "sigma", lambda: jnp.ones((), kernel.dtype))
    if tuple(v_var.value.shape) != tuple(v_shape):
      raise checks.InvjaxError(
          f"{type(self).__name__} {self.name!r} was initialised for inputs whose power-iteration "
          f"vector has shape {tuple(v_var.value.shape)} but is called with shape {tuple(v_shape)}; "
          "the operator norm of a convolution depends on the input size, re-initialise the "
          "model for this input shape")
    if self.is_initializing():
      n_iter = self.n_init_power_iterations
    elif self.is_mutable_collection(SPECTRAL):
      n_iter = self.n_power_iterations
    else:
      n_iter = 0
    k_const = lax.stop_gradient(kernel)
    matvec = lambda w: apply_fn(w, k_const)
    rmatvec = jax.linear_transpose(matvec, jax.ShapeDtypeStruct(v_shape, kernel.dtype))
    v, _ = power_iteration(matvec, lambda u: rmatvec(u)[0], v_var.value, n_iter)
    v = lax.stop_gradient(v)
    u = apply_fn(v, kernel)                          # gradient flows to the kernel
    sigma = jnp.sqrt(jnp.sum(u * u))
    if self.is_mutable_collection(SPECTRAL):
      v_var.value = v
      sigma_var.value = lax.stop_gradient(sigma)
    return kernel / jnp.maximum(1.0, sigma / self.coeff)

  def _apply_normalised(self, x: Array, kernel_shape: Tuple[int, ...],
                        apply_fn: Callable[[Array, Array], Array],
                        v_shape: Tuple[int, ...]) -> Array:
    """`apply_fn(x, W_sn) (+ bias)` with the kernel `W` of shape `kernel_shape` normalised on
    inputs of shape `v_shape` (see `_normalise`)."""
    kernel = self.param("kernel", self.kernel_init, kernel_shape, x.dtype)
    kernel = self._normalise(kernel, apply_fn, v_shape)
    y = apply_fn(x, kernel)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,), x.dtype)
    return y


class SpectralDense(_SpectralLayer):
  """Dense layer `y = x @ W_sn + b` with `||W_sn||_2 <= coeff` (see module docstring).

  Attributes:
    features: output width.
    coeff: target operator norm, in (0, 1).
    n_power_iterations: power iterations per call while `"spectral"` is mutable.
    n_init_power_iterations: power iterations at `init`.
    use_bias: add a bias (does not change the Lipschitz constant).
    kernel_init, bias_init: initialisers of the (unnormalised) kernel and of the bias.
  All but `features` are keyword-only.
  """

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """`x`: `[..., in_features]` -> `[..., features]`."""
    check_coeff(self.coeff)
    return self._apply_normalised(x, (x.shape[-1], self.features), lambda v, k: v @ k,
                                  (x.shape[-1],))


def _conv(x: Array, kernel: Array, strides: Tuple[int, int], padding) -> Array:
  return conv.conv_general_dilated(x, kernel, strides, padding,
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))


class SpectralConv(_SpectralLayer):
  """2-D convolution (NHWC) whose *operator* norm on the input shape is <= `coeff`.

  The operator is the linear map `x -> conv(x, W)` on one example of shape
  `[H, W, C_in]` (padding and strides included), so the bound holds for the map the
  network really applies. The layer must be called with the spatial shape it was
  initialised with.

  Attributes:
    features: output channels.
    kernel_size: `(kh, kw)` or an int.
    strides: `(sh, sw)` or an int.
    padding: `"SAME"`, `"VALID"` or explicit pairs, as in `lax.conv_general_dilated`.
    coeff, n_power_iterations, n_init_power_iterations, use_bias, kernel_init, bias_init: as in
      `SpectralDense` (keyword-only).
  """
  kernel_size: Union[int, Sequence[int]] = (3, 3)
  strides: Union[int, Sequence[int]] = (1, 1)
  padding: Any = "SAME"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """`x`: `[batch, H, W, C_in]` -> `[batch, H', W', features]`."""
    check_coeff(self.coeff)
    checks.check_rank(x, 4, "x")
    ks = (self.kernel_size,) * 2 if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
    st = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
    return self._apply_normalised(x, ks + (x.shape[-1], self.features),
                                  lambda v, k: _conv(v, k, st, self.padding),
                                  (1,) + tuple(x.shape[1:]))


def converge_spectral_norms(model: nn.Module, variables, *args, n_rounds: int = 20,
                            method: Optional[Union[str, Callable]] = None, rngs=None,
                            **kwargs):
  """Runs `n_rounds` extra calls with `"spectral"` mutable and returns the new variables.

  Each call advances every spectral layer of `model` by its `n_power_iterations`
  power iterations, so a model with the default 5 gets `5 * n_rounds` more. Use it
  after training (or after loading a checkpoint) and before evaluating, inverting or
  certifying: it refreshes the power-iteration vectors that stale weights left behind.

  Args:
    model: a Flax module holding spectral layers.
    variables: its variables (must contain `"spectral"`).
    *args: inputs for `method` (e.g. a batch `x`; only its shape matters).
    n_rounds: number of calls.
    method: the method to call (default `__call__`); for invjax i-ResNets use
      `"transform"`, which skips the log-det.
    rngs: rng streams the method needs, if any.
    **kwargs: passed to the method.

  Returns:
    `variables` with the updated `"spectral"` collection.
  """
  checks.check_positive(n_rounds, "n_rounds")
  if SPECTRAL not in variables:
    raise checks.InvjaxError(
        f"variables have no {SPECTRAL!r} collection (got {list(variables)}); "
        "the model has no spectral layers or variables come from a different model")

  @compilation.jit
  def run(variables, args):
    def body(_, spectral):
      vs = {**variables, SPECTRAL: spectral}
      _, upd = model.apply(vs, *args, method=method, mutable=[SPECTRAL], rngs=rngs, **kwargs)
      return upd[SPECTRAL]
    return lax.fori_loop(0, int(n_rounds), body, variables[SPECTRAL])

  spectral = run(dict(variables), args)
  return {**variables, SPECTRAL: spectral}
