"""Invertible residual networks (i-ResNet, Behrmann et al. 2019; Residual Flows, Chen et al. 2019).

A block is `y = x + g(x)` where `g` is a stack of spectrally normalised layers (each with
operator norm `<= coeff < 1`) separated by 1-Lipschitz activations (LipSwish or ELU), so
`Lip(g) <= coeff ** n_layers < 1` and the block is a bi-Lipschitz bijection:

* forward: `y = x + g(x)`, `log_det = log det(I + J_g(x))` computed per `logdet`:
  `"exact"` (dense Jacobian, small inputs), `"power_series"` (Hutchinson *estimate* of the
  truncated series), `"russian_roulette"` (unbiased *estimate*), or `"none"` (no log-det:
  zeros, for classifiers that never use it). Estimates draw their randomness from the Flax
  rng stream `"logdet"`: `model.apply(variables, x, rngs={"logdet": key})`.
* inverse: fixed-point iteration `x <- y - g(x)` from `x = y` (`invjax.flows.fixed_point`),
  stopping at `inverse_tol` (max-abs of `y - (x + g(x))`) or `inverse_max_iter`. The residual
  is sown into the collection `"diagnostics"` (`inverse_residual` `[batch]`,
  `inverse_iterations`) and returned by `inverse_with_info`; check it with
  `invjax.flows.fixed_point.check_converged`. An inverse that stops above `inverse_tol` issues a
  `ConvergenceWarning` naming the residual, also under `jax.jit` (`inverse_warn=False`, or
  `warn=False` per call, turns it off). The inverse is differentiable in `y` and in
  the weights, forward and reverse mode, by the implicit function theorem
  (`fixed_point_implicit`: `dx = (I + J_g(x))^{-1} (dy - dg)`, not by unrolling the loop);
  `inverse_transform(..., unroll=n)` instead runs `n` iterations and differentiates through
  them (`fixed_point_unrolled`).

`IResNet` stacks blocks in stages, with a space-to-depth squeeze between stages (conv
blocks), sums the log-dets, and inverts blocks in reverse order. Its spectral layers keep
power-iteration vectors in the `"spectral"` collection (see `invjax.flows.spectral_norm`):
train with `mutable=["spectral"]`, and before evaluating/inverting a trained model refresh
them with `converge_spectral_norms(model, variables, x, method="transform")`.

Example:
  model = smoke()                                 # 32x32x3, 2 stages of 2 blocks, hidden 32
  variables = model.init(jax.random.key(0), x)   # x: [batch, 32, 32, 3] float
  z, log_det = model.apply(variables, x, rngs={"logdet": key})
  x_rec, _, infos = model.apply(variables, z, method="inverse_with_info",
                                rngs={"logdet": key})
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from invjax._src import checks
from invjax.flows import logdet as logdet_lib
from invjax.flows.activations import get_activation
from invjax.flows.fixed_point import FixedPointInfo, fixed_point_implicit, fixed_point_unrolled
from invjax.flows.spectral_norm import SpectralConv, SpectralDense, check_coeff
from invjax.flows.squeeze import squeeze2d, unsqueeze2d

Array = jax.Array

LOGDETS = ("exact", "power_series", "russian_roulette", "none")
KINDS = ("conv", "dense")
DIAGNOSTICS = "diagnostics"
LOGDET_RNG = "logdet"


class BranchSettings(nn.Module):
  """The settings of the residual branch `g` (`ResidualNet`), shared by the block settings.

  Attributes:
    hidden: width of `g`.
    kind: `"conv"` (NHWC input) or `"dense"` (`[batch, d]` input).
    kernel_sizes: conv kernel sizes of `g`'s layers (their count is the depth of `g`).
    coeff: spectral-norm coefficient per layer, in (0, 1).
    activation: `"lipswish"` or `"elu"`.
    n_power_iterations: power iterations per training call; n_init_power_iterations: at init.
  """
  hidden: int = 32
  kind: str = "conv"
  kernel_sizes: Sequence[int] = (3, 1, 3)
  coeff: float = 0.9
  activation: str = "lipswish"
  n_power_iterations: int = 5
  n_init_power_iterations: int = 50


class ResidualNet(BranchSettings):
  """The residual branch `g`: spectrally normalised layers with 1-Lipschitz activations between.

  `kind="conv"`: convolutions with kernel sizes `kernel_sizes` (default 3-1-3 as in the
  references), `hidden` channels inside, output channels = input channels. `kind="dense"`:
  `len(kernel_sizes)` dense layers of width `hidden` (kernel sizes ignored) on `[batch, d]`.
  `Lip(g) <= coeff ** len(kernel_sizes)`.
  """

  @nn.compact
  def __call__(self, x: Array) -> Array:
    n = len(self.kernel_sizes)
    h = x
    for i, k in enumerate(self.kernel_sizes):
      feats = x.shape[-1] if i == n - 1 else self.hidden
      kw = dict(coeff=self.coeff, n_power_iterations=self.n_power_iterations,
                n_init_power_iterations=self.n_init_power_iterations, name=f"layer_{i}")
      if self.kind == "conv":
        h = SpectralConv(feats, (k, k), **kw)(h)
      else:
        h = SpectralDense(feats, **kw)(h)
      if i < n - 1:
        h = get_activation(self.activation)(h)
    return h


class BlockSettings(BranchSettings):
  """The settings of an i-ResNet block, declared once for `IResNetBlock` and `IResNet`.

  `IResNetBlock` and `IResNet` both extend it, so an `IResNet` carries the settings its every
  block is built with (`block_kwargs()`), next to its own `stages`.

  Attributes:
    hidden, kind, kernel_sizes, coeff, activation, n_power_iterations,
      n_init_power_iterations: of the residual branch `g` (`BranchSettings`).
    logdet: `"exact"`, `"power_series"`, `"russian_roulette"` or `"none"`.
    n_terms: power-series terms. n_samples: Hutchinson probes. noise: `"gaussian"`/`"rademacher"`.
    n_exact_terms, distribution, lam, p, max_terms: Russian-roulette settings.
    neumann_grad: Neumann-series (memory-efficient) log-det gradient for the estimates.
    exact_max_dim: largest per-example size accepted by `logdet="exact"`.
    inverse_tol, inverse_max_iter: fixed-point inverse stopping rule.
    inverse_warn: warn (`invjax.ConvergenceWarning`, also under `jax.jit`)
      when a fixed-point inverse stops above `inverse_tol`; False compiles no check.
  """
  logdet: str = "power_series"
  n_terms: int = 5
  n_samples: int = 1
  noise: str = "gaussian"
  n_exact_terms: int = 2
  distribution: str = "poisson"
  lam: float = 2.0
  p: float = 0.5
  max_terms: int = 40
  neumann_grad: bool = True
  exact_max_dim: int = 4096
  inverse_tol: float = 1e-5
  inverse_max_iter: int = 100
  inverse_warn: bool = True

  def block_kwargs(self) -> Dict[str, Any]:
    """These settings as `IResNetBlock` keyword arguments (`IResNetBlock(**m.block_kwargs())`)."""
    kw = {f: getattr(self, f) for f in BLOCK_FIELDS}
    kw["kernel_sizes"] = tuple(kw["kernel_sizes"])
    return kw

  def _check_input(self, x, name):
    checks.check_flow_input(self, x, name, rank=4 if self.kind == "conv" else 2)


def _settings(cls) -> Tuple[str, ...]:
  """The attribute names of a settings class (its dataclass fields but Flax's parent and name)."""
  return tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name"))


BRANCH_FIELDS = _settings(BranchSettings)
BLOCK_FIELDS = _settings(BlockSettings)


class IResNetBlock(BlockSettings):
  """Invertible residual block `y = x + g(x)` (see module docstring; settings: `BlockSettings`).

  Applied as the top-level module (not inside an `IResNet`), it also checks that concrete
  inputs are finite.
  """

  def setup(self):
    check_coeff(self.coeff)
    if self.kind not in KINDS:
      raise checks.InvjaxError(f"kind must be one of {KINDS}, got {self.kind!r}")
    if self.logdet not in LOGDETS:
      raise checks.InvjaxError(f"logdet must be one of {LOGDETS}, got {self.logdet!r}")
    if len(self.kernel_sizes) < 1:
      raise checks.InvjaxError("kernel_sizes must name at least one layer")
    self.g = ResidualNet(**{f: v for f, v in self.block_kwargs().items() if f in BRANCH_FIELDS})

  # --- helpers -------------------------------------------------------------------------------
  def _check_input(self, x, name):
    super()._check_input(x, name)
    if self.logdet == "exact" and np.prod(x.shape[1:]) > self.exact_max_dim:
      raise checks.InvjaxError(
          f"logdet='exact' needs the dense Jacobian of each example of shape {tuple(x.shape[1:])}"
          f" ({int(np.prod(x.shape[1:]))} > exact_max_dim={self.exact_max_dim}); use "
          "'power_series' or 'russian_roulette' estimates for inputs this large")

  def _g_pure(self, x):
    """Calls `g(x)` once (creates params, updates `"spectral"` when mutable) and returns
    `(g(x), g_fn, g_variables)` with `g_fn(g_variables, z)` a pure function for transforms."""
    h = self.g(x)
    g_vars = self.g.variables
    unbound = self.g.clone(parent=None, name=None)
    return h, (lambda variables, z: unbound.apply(variables, z)), g_vars

  def _logdet(self, g_fn, g_vars, x):
    if self.logdet == "none":
      return jnp.zeros((x.shape[0],), x.dtype)
    if self.logdet == "exact":
      return logdet_lib.exact_logdet(g_fn, g_vars, x, max_dim=self.exact_max_dim)
    if self.is_initializing() and not self.has_rng(LOGDET_RNG):
      key = self.make_rng("params")     # `model.init(key, x)`: any valid key will do
    elif not self.has_rng(LOGDET_RNG):
      raise checks.InvjaxError(
          f"logdet={self.logdet!r} is a stochastic estimate and needs a PRNG key: "
          f"model.apply(variables, x, rngs={{'{LOGDET_RNG}': key}}) (or use logdet='exact' "
          "for small inputs)")
    else:
      key = self.make_rng(LOGDET_RNG)
    if self.logdet == "power_series":
      return logdet_lib.power_series_logdet(
          g_fn, g_vars, x, key, n_terms=self.n_terms, n_samples=self.n_samples,
          noise=self.noise, neumann_grad=self.neumann_grad)
    return logdet_lib.russian_roulette_logdet(
        g_fn, g_vars, x, key, n_exact_terms=self.n_exact_terms, distribution=self.distribution,
        lam=self.lam, p=self.p, n_samples=self.n_samples, noise=self.noise,
        neumann_grad=self.neumann_grad, max_terms=self.max_terms)

  # --- flow API ------------------------------------------------------------------------------
  def __call__(self, x: Array) -> Tuple[Array, Array]:
    """`x` `[batch, ...]` -> `(y = x + g(x), log det(I + J_g(x)) [batch])` (exact or estimate)."""
    self._check_input(x, "x")
    h, g_fn, g_vars = self._g_pure(x)
    return x + h, self._logdet(g_fn, g_vars, x)

  def transform(self, x: Array) -> Array:
    """`x + g(x)` without the log-det."""
    self._check_input(x, "x")
    return x + self.g(x)

  def inverse_transform(self, y: Array, *, tol: Optional[float] = None,
                        max_iter: Optional[Any] = None, warn: Optional[bool] = None,
                        unroll: Optional[int] = None) -> Tuple[Array, FixedPointInfo]:
    """Fixed-point inverse without the log-det: `(x, FixedPointInfo)`; sows the residual.

    `tol` / `max_iter` / `warn` override `inverse_tol` / `inverse_max_iter` / `inverse_warn`
    (`max_iter` may be a traced integer, e.g. to sweep it under one `jit`). `unroll`: None
    (implicit differentiation, see the module docstring), or a Python int: run exactly that
    many iterations `x <- y - g(x)` and differentiate through them
    (`fixed_point_unrolled`; no tolerance, no warning).
    """
    self._check_input(y, "y")
    _, g_fn, g_vars = self._g_pure(y)
    if unroll is not None:
      x, info = fixed_point_unrolled(lambda z: y - g_fn(g_vars, z), y, num_iter=unroll)
    else:
      x, info = fixed_point_implicit(
          lambda p, z: p[1] - g_fn(p[0], z), (g_vars, y), y,
          tol=self.inverse_tol if tol is None else tol,
          max_iter=self.inverse_max_iter if max_iter is None else max_iter,
          grad_max_iter=self.inverse_max_iter, warn=self.inverse_warn if warn is None else warn)
    self.sow(DIAGNOSTICS, "inverse_residual", info.residual)
    self.sow(DIAGNOSTICS, "inverse_iterations", info.iterations)
    return x, info

  def inverse_with_info(self, y: Array) -> Tuple[Array, Array, FixedPointInfo]:
    """`(x, log_det_inv [batch], FixedPointInfo)`; `log_det_inv = -log det(I + J_g(x))`."""
    x, info = self.inverse_transform(y)
    _, g_fn, g_vars = self._g_pure(x)
    return x, -self._logdet(g_fn, g_vars, x), info

  def inverse(self, y: Array) -> Tuple[Array, Array]:
    """`(x, log_det_inv)` with `x + g(x) = y` up to `inverse_tol` (see `inverse_with_info`)."""
    x, log_det_inv, _ = self.inverse_with_info(y)
    return x, log_det_inv


class IResNet(BlockSettings):
  """A stack of `IResNetBlock`s; `stages[i]` blocks in stage `i`, squeeze between stages.

  For `kind="conv"`, inputs are NHWC with height and width divisible by
  `2 ** (len(stages) - 1)`; each squeeze maps `[B, H, W, C] -> [B, H/2, W/2, 4C]` (log-det 0).
  For `kind="dense"`, inputs are `[batch, d]` and `stages` must have one entry.
  The other attributes are the `BlockSettings`, shared by every block.
  """
  stages: Sequence[int] = (2, 2)

  def setup(self):
    check_coeff(self.coeff)
    if not self.stages or any(int(n) < 1 for n in self.stages):
      raise checks.InvjaxError(f"stages must be a non-empty list of block counts >= 1, got "
                               f"{tuple(self.stages)}")
    if self.kind == "dense" and len(self.stages) != 1:
      raise checks.InvjaxError(
          f"kind='dense' has no squeeze between stages: use one stage, got {tuple(self.stages)}")
    self.blocks = [IResNetBlock(**self.block_kwargs(), name=f"stage{s}_block{b}")
                   for s, n in enumerate(self.stages) for b in range(int(n))]

  def _plan(self):
    """Yields ("squeeze", None) / ("block", index) in forward order."""
    i = 0
    for s, n in enumerate(self.stages):
      if s > 0:
        yield "squeeze", None
      for _ in range(int(n)):
        yield "block", i
        i += 1

  def lipschitz_bounds(self) -> Tuple[float, float]:
    """Upper bounds `(Lip(F), Lip(F^{-1})) = (prod_i (1 + c_i), prod_i 1 / (1 - c_i))`.

    `c_i = coeff ** n_layers` bounds `Lip(g_i)` (squeezes are permutations, Lipschitz 1).
    The bounds assume converged power iterations (see `converge_spectral_norms`); needs no
    variables: `model.lipschitz_bounds()`.
    """
    check_coeff(self.coeff)
    c = float(self.coeff) ** len(self.kernel_sizes)
    n = sum(int(s) for s in self.stages)
    return (1.0 + c) ** n, (1.0 / (1.0 - c)) ** n

  def __call__(self, x: Array) -> Tuple[Array, Array]:
    """`x` -> `(z, log_det [batch])`; `z` is `[B, H/2^(S-1), W/2^(S-1), C*4^(S-1)]` for conv."""
    self._check_input(x, "x")
    total = jnp.zeros((x.shape[0],), x.dtype)
    for op, i in self._plan():
      if op == "squeeze":
        x = squeeze2d(x)
      else:
        x, ld = self.blocks[i](x)
        total = total + ld
    return x, total

  def transform(self, x: Array) -> Array:
    """Forward map without log-dets (also the method for `converge_spectral_norms`)."""
    self._check_input(x, "x")
    for op, i in self._plan():
      x = squeeze2d(x) if op == "squeeze" else self.blocks[i].transform(x)
    return x

  def inverse_transform(self, z: Array, *, tol: Optional[float] = None,
                        max_iter: Optional[Any] = None, warn: Optional[bool] = None,
                        unroll: Optional[int] = None
                        ) -> Tuple[Array, Tuple[FixedPointInfo, ...]]:
    """Inverse without log-dets: `(x, per-block FixedPointInfo in forward block order)`.

    `tol` / `max_iter` / `warn` override the blocks' `inverse_tol` / `inverse_max_iter` /
    `inverse_warn`; `unroll` (iterations differentiated through, per block) as in
    `IResNetBlock.inverse_transform`.
    """
    self._check_input(z, "z")
    infos = {}
    for op, i in reversed(list(self._plan())):
      if op == "squeeze":
        z = unsqueeze2d(z)
      else:
        z, infos[i] = self.blocks[i].inverse_transform(z, tol=tol, max_iter=max_iter,
                                                         warn=warn, unroll=unroll)
    return z, tuple(infos[i] for i in sorted(infos))

  def inverse_with_info(self, z: Array) -> Tuple[Array, Array, Tuple[FixedPointInfo, ...]]:
    """`(x, log_det_inv [batch], per-block FixedPointInfo in forward block order)`."""
    self._check_input(z, "z")
    total = jnp.zeros((z.shape[0],), z.dtype)
    infos = {}
    for op, i in reversed(list(self._plan())):
      if op == "squeeze":
        z = unsqueeze2d(z)
      else:
        z, ld, infos[i] = self.blocks[i].inverse_with_info(z)
        total = total + ld
    return z, total, tuple(infos[i] for i in sorted(infos))

  def inverse(self, z: Array) -> Tuple[Array, Array]:
    """`(x, log_det_inv [batch])`, inverting blocks in reverse order by fixed-point iteration."""
    x, total, _ = self.inverse_with_info(z)
    return x, total


def smoke_config() -> ml_collections.ConfigDict:
  """CPU-friendly i-ResNet for 32x32x3 images: 2 stages x 2 blocks, hidden 32, coeff 0.9."""
  return ml_collections.ConfigDict(dict(
      stages=(2, 2), hidden=32, kind="conv", kernel_sizes=(3, 1, 3), coeff=0.9,
      activation="lipswish", logdet="power_series", n_terms=5, neumann_grad=True,
      inverse_tol=1e-5, inverse_max_iter=100))


def from_config(config: Any) -> IResNet:
  """`IResNet(**config)` from a flat dict / ConfigDict of `IResNet` attributes (`stages` and
  the `BlockSettings`)."""
  cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  unknown = set(cfg) - set(BLOCK_FIELDS) - {"stages"}
  if unknown:
    raise checks.InvjaxError(f"unknown IResNet config field(s) {sorted(unknown)}")
  for f in ("stages", "kernel_sizes"):
    if f in cfg:
      cfg[f] = tuple(cfg[f])
  return IResNet(**cfg)


def smoke(**overrides) -> IResNet:
  """The `smoke_config()` model, with attribute overrides."""
  cfg = smoke_config()
  cfg.update(overrides)
  return from_config(cfg)
