"""Certified i-ResNet: 1-Lipschitz invertible residual blocks whose constant can be certified.

A block is `F(x) = (x + g(x)) / (1 + c)`, where `g` is the i-ResNet residual branch
(`invjax.flows.iresnet.ResidualNet`: spectrally normalised layers, each with operator norm
`<= coeff`, separated by 1-Lipschitz activations) and `c = coeff ** n_layers` is the nominal
bound of `Lip(g)`. The bounds, with `L_g` any upper bound of `Lip(g)` (the nominal `c`, or
better the product of the layers' *actual* operator norms, `invjax.robust.certificates`):

* `Lip(F) <= (1 + L_g) / (1 + c)`: `||F(x) - F(x')|| <= (||x - x'|| + ||g(x) - g(x')||) /
  (1 + c)` (triangle inequality); `<= 1` when `L_g <= c`.
* `Lip(F^-1) <= (1 + c) / (1 - L_g)` when `L_g < 1`: from `x - x' = (1 + c)(y - y') - (g(x)
  - g(x'))`, `||x - x'|| <= (1 + c) ||y - y'|| + L_g ||x - x'||` (Behrmann et al. 2019, Lemma 2).
* `Lip(g) <= prod_i ||W_i||`: the layers compose with activations of slope in [-1, 1]
  (LipSwish, ELU; `invjax.flows.activations`), each 1-Lipschitz, and biases do not count.
* the squeeze between stages is a permutation of the entries (an isometry: Lipschitz 1 both
  ways), so the network's bounds are the products of its blocks'.

The forward, inverse and log-det reuse the i-ResNet block: `F` is `IResNetBlock` followed by
the fixed scaling `s = 1 / (1 + c)` (`log|det| = log det(I + J_g) + D log s`, D the size of
one example), and `F^-1(y)` is the i-ResNet fixed-point inverse of `y / s`
(`x <- y / s - g(x)`, a contraction when `Lip(g) < 1`; its sown residual is measured in the
unscaled space, so it is `1 + c` times the residual in `y`). The scaling keeps activations from
growing by up to `(1 + c)` per block, so a deep stack stays 1-Lipschitz without the head having
to absorb a `(1 + c) ** n` factor (the certified radius is unchanged by a global scale).

`branch_layers(flow, params, spectral)` gives, for a `LipschitzResNet` or an `IResNet`, the
normalised kernels each branch really applies (the formula of `invjax.flows.spectral_norm`,
`W / max(1, ||W v|| / coeff)` with the stored power-iteration vector `v`) and their input
shapes, which is what `invjax.robust.certificates` bounds and `invjax.robust.margin_training`
differentiates.

Example:
  flow = LipschitzResNet(stages=(1, 1), hidden=16)
  clf = make_classifier(flow, num_classes=10, input_shape=(32, 32, 3), head="pooled")
"""
from __future__ import annotations

from typing import Any, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from invjax._src import checks
from invjax._src import conv
from invjax.flows.fixed_point import FixedPointInfo
from invjax.flows.iresnet import BLOCK_FIELDS, IResNet, IResNetBlock
from invjax.flows.spectral_norm import SPECTRAL, check_coeff

Array = jax.Array


def nominal_branch_bound(coeff: float, n_layers: int) -> float:
  """`c = coeff ** n_layers`, the bound of `Lip(g)` the coefficient promises."""
  check_coeff(coeff)
  return float(coeff) ** int(n_layers)


class LipschitzBlock(IResNetBlock):
  """`y = (x + g(x)) / (1 + c)`, `c = coeff ** len(kernel_sizes)` (see the module docstring).

  The settings are the i-ResNet block's (`invjax.flows.iresnet.BlockSettings`); `logdet`
  defaults to `"none"` (a classifier needs none; `"exact"` / estimates add `D log s`).
  """
  logdet: str = "none"

  def scale(self) -> float:
    """The fixed output scaling `s = 1 / (1 + c)`."""
    return 1.0 / (1.0 + nominal_branch_bound(self.coeff, len(self.kernel_sizes)))

  def _log_scale(self, x: Array) -> Array:
    if self.logdet == "none":
      return jnp.zeros((x.shape[0],), x.dtype)
    d = int(np.prod(x.shape[1:]))
    return jnp.full((x.shape[0],), d * np.log(self.scale()), x.dtype)

  def __call__(self, x: Array) -> Tuple[Array, Array]:
    """`x` -> `((x + g(x)) * s, log det(I + J_g(x)) + D log s)` (zeros for `logdet="none"`)."""
    y, log_det = super().__call__(x)
    return y * self.scale(), log_det + self._log_scale(x)

  def transform(self, x: Array) -> Array:
    """`(x + g(x)) * s` without the log-det."""
    return super().transform(x) * self.scale()

  def inverse_transform(self, y: Array, **kwargs: Any) -> Tuple[Array, FixedPointInfo]:
    """Solves `x + g(x) = y / s` by the i-ResNet fixed-point inverse (same keywords)."""
    return super().inverse_transform(y / self.scale(), **kwargs)

  def inverse_with_info(self, y: Array) -> Tuple[Array, Array, FixedPointInfo]:
    """`(x, log_det_inv [batch], FixedPointInfo)` with `log_det_inv = -log|det J_F(x)|`."""
    x, log_det_inv, info = super().inverse_with_info(y)
    return x, log_det_inv - self._log_scale(x), info


class LipschitzResNet(IResNet):
  """A stack of `LipschitzBlock`s in stages with a squeeze between stages (see `IResNet`).

  `logdet` defaults to `"none"`; every other setting is the i-ResNet's.
  """
  logdet: str = "none"

  def setup(self):
    check_coeff(self.coeff)
    if not self.stages or any(int(n) < 1 for n in self.stages):
      raise checks.InvjaxError(f"stages must be a non-empty list of block counts >= 1, got "
                               f"{tuple(self.stages)}")
    if self.kind == "dense" and len(self.stages) != 1:
      raise checks.InvjaxError(
          f"kind='dense' has no squeeze between stages: use one stage, got {tuple(self.stages)}")
    self.blocks = [LipschitzBlock(**self.block_kwargs(), name=f"stage{s}_block{b}")
                   for s, n in enumerate(self.stages) for b in range(int(n))]

  def lipschitz_bounds(self) -> Tuple[float, float]:
    """Nominal `(Lip(F), Lip(F^-1)) = (1, prod_i (1 + c) / (1 - c))` (converged power
    iterations assumed; `invjax.robust.certificates.certified_lipschitz` certifies the weights)."""
    c = nominal_branch_bound(self.coeff, len(self.kernel_sizes))
    n = sum(int(s) for s in self.stages)
    return 1.0, ((1.0 + c) / (1.0 - c)) ** n


class BranchLayer(NamedTuple):
  """One spectrally normalised layer of a residual branch, as the network applies it.

  Attributes:
    kernel: the normalised kernel `W / max(1, ||W v|| / coeff)` (HWIO conv or [in, out] dense).
    estimate: `||W_sn v||` for the stored unit vector `v`: a power-iteration LOWER bound of
      `||W_sn||`, differentiable in the kernel (`v` is a constant).
    input_shape: one example's input shape (`(H, W, C)` for a conv, `(d,)` for a dense layer).
  """
  kernel: Array
  estimate: Array
  input_shape: Tuple[int, ...]


def apply_layer(v: Array, kernel: Array) -> Array:
  """The linear map of a branch layer: `conv(v, kernel)` (stride 1, "SAME", as `ResidualNet`
  builds its convolutions) or `v @ kernel`."""
  if kernel.ndim == 4:
    return conv.conv_general_dilated(v, kernel, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return v @ kernel


def block_scale(flow) -> float:
  """The output scaling of every block: `1 / (1 + c)` for `LipschitzResNet`, 1 for `IResNet`."""
  if isinstance(flow, LipschitzResNet):
    return 1.0 / (1.0 + nominal_branch_bound(flow.coeff, len(flow.kernel_sizes)))
  if isinstance(flow, IResNet):
    return 1.0
  raise checks.InvjaxError(
      f"a certifiable flow is a LipschitzResNet or an IResNet, got {type(flow).__name__}")


def branch_layers(flow, params, spectral) -> Tuple[Tuple[BranchLayer, ...], ...]:
  """Per block (forward order), the `BranchLayer`s of its residual branch `g`.

  Args:
    flow: a `LipschitzResNet` or `IResNet` module (its `stages`, `kernel_sizes`, `coeff`).
    params: the flow's `"params"` collection (e.g. `variables["params"]["flow"]` of a
      classifier).
    spectral: the flow's `"spectral"` collection (the power-iteration vectors).

  Returns:
    A tuple per block of a tuple per layer; jnp values, differentiable in `params`.
  """
  block_scale(flow)  # raises for other flows
  out = []
  for s, n in enumerate(flow.stages):
    for b in range(int(n)):
      name = f"stage{s}_block{b}"
      if name not in params or name not in spectral:
        raise checks.InvjaxError(
            f"the variables have no block {name!r} (params hold {sorted(params)}); pass the "
            f"flow's own collections, e.g. variables['params']['flow'] and "
            f"variables[{SPECTRAL!r}]['flow']")
      layers = []
      for i in range(len(flow.kernel_sizes)):
        kernel = params[name]["g"][f"layer_{i}"]["kernel"]
        v = jax.lax.stop_gradient(spectral[name]["g"][f"layer_{i}"]["v"])
        sigma = jnp.sqrt(jnp.sum(jnp.square(apply_layer(v, kernel))))
        w_sn = kernel / jnp.maximum(1.0, sigma / flow.coeff)
        estimate = jnp.sqrt(jnp.sum(jnp.square(apply_layer(v, w_sn))))
        shape = tuple(int(d) for d in (v.shape[1:] if kernel.ndim == 4 else v.shape))
        layers.append(BranchLayer(w_sn, estimate, shape))
      out.append(tuple(layers))
  return tuple(out)


def from_config(config: Any) -> LipschitzResNet:
  """`LipschitzResNet(**config)` from a flat dict / ConfigDict of its attributes."""
  cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  unknown = set(cfg) - set(BLOCK_FIELDS) - {"stages"}
  if unknown:
    raise checks.InvjaxError(f"unknown LipschitzResNet config field(s) {sorted(unknown)}")
  for f in ("stages", "kernel_sizes"):
    if f in cfg:
      cfg[f] = tuple(cfg[f])
  return LipschitzResNet(**cfg)

