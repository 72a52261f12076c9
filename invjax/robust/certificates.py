"""Certificates for invertible classifiers: provable Lipschitz constants, certified radii.

`certified_lipschitz(model, variables)` bounds the l2 Lipschitz constant of `x -> logits` of an
`InvertibleClassifier` whose flow is a certified i-ResNet (`invjax.flows.lipschitz_resnet`) or
an i-ResNet, from the operators the network really applies (not from the nominal
coefficient):

* each spectrally normalised layer applies `W_sn = W / max(1, ||W v|| / coeff)` with the
  stored vector `v` (`invjax.flows.lipschitz_resnet.branch_layers`); a stale `v` can leave
  `||W_sn||` above `coeff`, so its norm is bounded afresh:
  - dense: `||W_sn||_2` by a float64 SVD (exact);
  - convolution on `[H, W, C]` inputs: the l2 norm of the circular convolution on the
    `(H + kh - 1) x (W + kw - 1)` torus, `max_w ||K_hat(w)||_2` over the 2-D DFT frequencies
    `w` of the zero-padded kernel (`K_hat(w)` the `C_in x C_out` matrix of kernel Fourier
    coefficients; Sedghi, Gupta & Long 2019, "The singular values of convolutional layers":
    the DFT block-diagonalises a circular convolution). It is an UPPER bound of the layer's
    zero-padded convolution for any padding and stride, and needs no iteration to converge:
    embedding the image in the larger torus with zeros is an isometry, on which the circular
    correlation reproduces every output of the full linear correlation (the torus is exactly
    as large as the full output, so nothing wraps around), and a zero-padded (or strided)
    convolution's output is a selection of those outputs (or zeros), a map of norm <= 1.
    Cross-correlation versus convolution (a flip) and the kernel's centring (a circular
    shift) only permute coordinates, which leaves norms unchanged. The torus adds
    `kh - 1` rows and columns, so the bound is tight on large images but loose on small ones
    (a 3x3 kernel on 2x2 inputs); a layer whose dense matrix has at most
    `dense_max_entries` entries is therefore also bounded exactly: its matrix is built from
    one-hot inputs (each entry a kernel value, exact in floating point) and its norm taken by
    a float64 SVD, and the smaller of the two bounds is used. Every float64 SVD / FFT here is
    backward stable (relative error ~1e-15), and each bound is multiplied by `1 + 1e-6` to
    cover it;
* power iteration on the true zero-padded operator (`power_iterations` steps from the stored
  `v`) gives, per layer, a LOWER bound of the same norm, reported beside the upper one so the
  gap (the cost of the torus bound) is visible;
* `Lip(g) <= prod ||W_sn||` (1-Lipschitz activations), a block is `<= s (1 + Lip(g))` with
  its output scale `s` (`1 / (1 + c)` certified i-ResNet, 1 i-ResNet), its inverse
  `<= 1 / (s (1 - Lip(g)))` when `Lip(g) < 1`, squeezes are isometries, and the linear head
  `logits = z @ A + b` has `||A||_2` by a float64 SVD. The product is the certificate.

`certify(model, variables, x, y, radii)` turns it into per-example certified radii
`margin / (sqrt(2) L)` (`invjax.robust.lipschitz.certified_radius`, Tsuzuku et al. 2018) and
certified accuracies; `plot_certified_curve` draws certified accuracy against the radius.
`latent_to_image_lower_bound(r, L_e)` is what any latent attack pays in image space: an
encoder `E` with `Lip(E) <= L_e` moves `||E(x') - E(x)|| <= L_e ||x' - x||`, so a latent change
of norm `r` needs an image change of norm `>= r / L_e` (`LipschitzCertificate.encoder`).
"""
from __future__ import annotations

import functools
from typing import Mapping, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from invjax._src import checks
from invjax._src import compilation
from invjax._src import io
from invjax.flows import lipschitz_resnet
from invjax.flows.spectral_norm import SPECTRAL, power_iteration
from invjax.robust import lipschitz as lipschitz_lib

Array = jax.Array


class LipschitzCertificate(NamedTuple):
  """Provable l2 Lipschitz bounds of an invertible classifier (floats).

  Attributes:
    lipschitz: of `x -> logits` (`head * encoder`), the constant certificates use.
    encoder: of `x -> z` (the flow), the product of `blocks`.
    decoder: of `z -> x` (the inverse flow); `inf` when some branch bound reaches 1.
    head: `||A||_2` of the linear head.
    blocks: per block, `s (1 + Lip(g))`.
    branches: per block, the bound of `Lip(g)`, `prod` of its layers' `layers`.
    layers: per block, per layer, the upper bound of `||W_sn||` (SVD / torus DFT).
    layers_lower: the same layers' power-iteration lower bounds on the true operator.
    nominal: the constant the coefficient promises, `head * prod_b s (1 + c)`.
  """
  lipschitz: float
  encoder: float
  decoder: float
  head: float
  blocks: Tuple[float, ...]
  branches: Tuple[float, ...]
  layers: Tuple[Tuple[float, ...], ...]
  layers_lower: Tuple[Tuple[float, ...], ...]
  nominal: float


class Certification(NamedTuple):
  """What `certify` returns.

  Attributes:
    radius: float [N], certified l2 radius (0 when misclassified).
    correct: bool [N], clean prediction == label.
    margin: float [N], `logit_y - max_{j != y} logit_j`.
    radii: the radii asked for.
    certified_accuracy: float [len(radii)], fraction correct with `radius >= r`.
    clean_accuracy: float.
    lipschitz: the constant used.
  """
  radius: np.ndarray
  correct: np.ndarray
  margin: np.ndarray
  radii: Tuple[float, ...]
  certified_accuracy: np.ndarray
  clean_accuracy: float
  lipschitz: float


def conv_norm_bound(kernel, input_hw: Sequence[int]) -> float:
  """Upper bound of the l2 norm of `x -> conv(x, kernel)` on `[H, W, C_in]` inputs.

  Args:
    kernel: HWIO `[kh, kw, C_in, C_out]`.
    input_hw: `(H, W)` of the layer's input.

  Returns:
    `max_w ||K_hat(w)||_2` over the DFT of the kernel zero-padded to `(H + kh - 1, W + kw - 1)`
    (float64): the norm of the circular convolution on that torus, which bounds the
    zero-padded convolution for any padding and stride (module docstring).
  """
  checks.check_rank(kernel, 4, "kernel")
  checks.check_finite(kernel, "kernel")
  k = np.asarray(kernel, np.float64)
  n1, n2 = int(input_hw[0]) + k.shape[0] - 1, int(input_hw[1]) + k.shape[1] - 1
  # Real kernel: frequencies w and -w have conjugate matrices (same singular values), so the
  # half spectrum of `rfft2` holds every distinct norm.
  k_hat = np.fft.rfft2(k, s=(n1, n2), axes=(0, 1))
  return float(np.max(np.linalg.norm(k_hat, ord=2, axis=(2, 3))))


_ROUNDING = 1.0 + 1e-6
_apply_jit = compilation.jit(lipschitz_resnet.apply_layer)


def _dense_matrix(layer: lipschitz_resnet.BranchLayer) -> np.ndarray:
  d = int(np.prod(layer.input_shape))
  basis = jnp.eye(d, dtype=layer.kernel.dtype).reshape((d,) + tuple(layer.input_shape))
  cols = _apply_jit(basis, layer.kernel)
  return np.asarray(cols, np.float64).reshape(d, -1)


def layer_norm_bound(layer: lipschitz_resnet.BranchLayer, *,
                     dense_max_entries: int = 2 ** 22) -> float:
  """Upper bound of one `BranchLayer`'s operator norm (module docstring).

  Dense layers: float64 SVD of the kernel. Convolutions: `conv_norm_bound`, or the float64
  SVD of the layer's dense matrix when smaller and the matrix has <= `dense_max_entries`
  entries.
  """
  if np.ndim(layer.kernel) == 2:
    return float(np.linalg.norm(np.asarray(layer.kernel, np.float64), ord=2)) * _ROUNDING
  bound = conv_norm_bound(layer.kernel, layer.input_shape[:2]) * _ROUNDING
  d_in = int(np.prod(layer.input_shape))
  d_out = d_in // layer.input_shape[-1] * int(layer.kernel.shape[-1])
  if d_in * d_out <= dense_max_entries:
    bound = min(bound, float(np.linalg.norm(_dense_matrix(layer), ord=2)) * _ROUNDING)
  return bound


@functools.partial(compilation.jit, static_argnames=("num_iters",))
def _power_lower(kernel: Array, v: Array, num_iters: int) -> Array:
  matvec = lambda u: lipschitz_resnet.apply_layer(u, kernel)
  rmatvec = jax.linear_transpose(matvec, jax.ShapeDtypeStruct(v.shape, v.dtype))
  return power_iteration(matvec, lambda u: rmatvec(u)[0], v, num_iters)[1]


def _layer_lower(layer: lipschitz_resnet.BranchLayer, v: Array, num_iters: int) -> float:
  """Power-iteration lower bound of the layer's norm (0 iterations: the stored estimate)."""
  if num_iters == 0:
    return float(layer.estimate)
  return float(_power_lower(layer.kernel, v, num_iters))


def head_matrix(model, variables) -> Array:
  """The classifier head's `A [D, num_classes]` (`logits = z @ A + b`)."""
  return model.apply(variables, method="linear_head")[0]


def _flow_collections(model, variables):
  flow = getattr(model, "flow", None)
  if flow is None:
    raise checks.InvjaxError(f"model must be an InvertibleClassifier, got {type(model).__name__}")
  lipschitz_resnet.block_scale(flow)
  if SPECTRAL not in variables:
    raise checks.InvjaxError(f"variables have no {SPECTRAL!r} collection (got {list(variables)})")
  return flow, variables["params"]["flow"], variables[SPECTRAL]["flow"]


def certifiable(model) -> bool:
  """Whether `certified_lipschitz` bounds `model` (an `InvertibleClassifier` over a
  `LipschitzResNet` or an `IResNet`)."""
  try:
    lipschitz_resnet.block_scale(getattr(model, "flow", None))
  except checks.InvjaxError:
    return False
  return True


def certified_lipschitz(model, variables, *, power_iterations: int = 100,
                        dense_max_entries: int = 2 ** 22) -> LipschitzCertificate:
  """Provable l2 Lipschitz bounds of `x -> logits`, `x -> z`, `z -> x` (module docstring).

  Args:
    model: an `InvertibleClassifier` whose flow is a `LipschitzResNet` or an `IResNet`.
    variables: its variables (with the `"spectral"` collection the model evaluates with).
    power_iterations: iterations of the per-layer lower bounds (reporting only; >= 0).
    dense_max_entries: the largest conv layer (entries of its dense matrix) also bounded by
      an exact SVD (`layer_norm_bound`); 0: the torus bound only.

  Returns:
    `LipschitzCertificate`.
  """
  if power_iterations < 0:
    raise checks.InvjaxError(f"power_iterations must be >= 0, got {power_iterations}")
  flow, params, spectral = _flow_collections(model, variables)
  scale = lipschitz_resnet.block_scale(flow)
  blocks = lipschitz_resnet.branch_layers(flow, params, spectral)
  names = [f"stage{s}_block{b}" for s, n in enumerate(flow.stages) for b in range(int(n))]
  layers, lowers = [], []
  for name, block in zip(names, blocks):
    layers.append(tuple(layer_norm_bound(layer, dense_max_entries=dense_max_entries)
                        for layer in block))
    vs = [spectral[name]["g"][f"layer_{i}"]["v"] for i in range(len(block))]
    lowers.append(tuple(_layer_lower(layer, v, int(power_iterations))
                        for layer, v in zip(block, vs)))
  branches = tuple(float(np.prod(ls)) for ls in layers)
  block_bounds = tuple(scale * (1.0 + b) for b in branches)
  inverse = tuple(1.0 / (scale * (1.0 - b)) if b < 1.0 else np.inf for b in branches)
  head = float(np.linalg.norm(np.asarray(head_matrix(model, variables), np.float64),
                              ord=2)) * _ROUNDING
  encoder = float(np.prod(block_bounds))
  c = lipschitz_resnet.nominal_branch_bound(flow.coeff, len(flow.kernel_sizes))
  return LipschitzCertificate(
      lipschitz=head * encoder, encoder=encoder, decoder=float(np.prod(inverse)), head=head,
      blocks=block_bounds, branches=branches, layers=tuple(layers), layers_lower=tuple(lowers),
      nominal=head * (scale * (1.0 + c)) ** len(blocks))


def certified_accuracy_curve(radius, correct, radii: Sequence[float]) -> np.ndarray:
  """Fraction of examples with `correct` and `radius >= r`, for each `r` in `radii`."""
  radius, correct = np.asarray(radius), np.asarray(correct, bool)
  if radius.shape != correct.shape or radius.ndim != 1:
    raise checks.InvjaxError(f"radius and correct must be [N] arrays of the same shape, got "
                             f"{radius.shape} and {correct.shape}")
  return np.array([float(np.mean(correct & (radius >= r))) for r in radii], np.float64)


def certify(model, variables, x: Array, y: Array, radii, *, lipschitz: Optional[float] = None,
            input_offset: float = 0.0, batch_size: int = 256) -> Certification:
  """Per-example certified l2 radii and certified accuracy at `radii`.

  Args:
    model, variables: a certifiable `InvertibleClassifier` (see `certified_lipschitz`).
    x: float [N, H, W, C] images; the model sees `x + input_offset` (a translation: the
      constant and the radii are those of `x`).
    y: int [N] labels.
    radii: a radius or a sequence of l2 radii (>= 0).
    lipschitz: an upper bound of the logits' constant (default: `certified_lipschitz`).
    input_offset: added to `x` before the model (e.g. the classifier spec's).
    batch_size: examples per forward pass.

  Returns:
    `Certification`.
  """
  checks.check_rank(x, 4, "x")
  checks.check_floating(x, "x")
  checks.check_finite(x, "x")
  checks.check_labels(y, np.shape(x)[0], "y")
  checks.check_positive(batch_size, "batch_size")
  radii = tuple(float(r) for r in np.atleast_1d(np.asarray(radii, np.float64)))
  for r in radii:
    checks.check_positive(r, "radii", strict=False)
  if lipschitz is None:
    lipschitz = certified_lipschitz(model, variables, power_iterations=0).lipschitz
  checks.check_positive(lipschitz, "lipschitz")
  fwd = jax.jit(lambda xb: model.apply(variables, xb + input_offset)[0])
  logits = np.concatenate([np.asarray(fwd(jnp.asarray(x[i:i + batch_size])))
                           for i in range(0, int(np.shape(x)[0]), batch_size)])
  return certify_logits(logits, y, radii, lipschitz=lipschitz)


def certify_logits(logits, y, radii, *, lipschitz: float) -> Certification:
  """`certify` from precomputed logits `[N, K]` of a network whose `x -> logits` map has
  l2 Lipschitz constant <= `lipschitz` (any certifiable model, e.g. a Parseval CNN)."""
  logits = np.asarray(logits)
  checks.check_rank(logits, 2, "logits")
  checks.check_labels(y, logits.shape[0], "y")
  checks.check_positive(lipschitz, "lipschitz")
  radii = tuple(float(r) for r in np.atleast_1d(np.asarray(radii, np.float64)))
  y = np.asarray(y)
  margin = np.asarray(lipschitz_lib.logit_margin(logits, y))
  correct = np.argmax(logits, -1) == y
  radius = np.where(correct, np.asarray(lipschitz_lib.certified_radius(margin, lipschitz)), 0.0)
  return Certification(radius=radius, correct=correct, margin=margin, radii=radii,
                       certified_accuracy=certified_accuracy_curve(radius, correct, radii),
                       clean_accuracy=float(np.mean(correct)), lipschitz=float(lipschitz))


def plot_certified_curve(path: str, curves: Mapping[str, Tuple], *,
                         max_radius: Optional[float] = None, marks: Sequence[float] = (),
                         num_points: int = 200, title: str = "certified accuracy") -> str:
  """Writes the png of certified accuracy against the l2 radius (atomically) and returns `path`.

  Args:
    path: the `.png` to write.
    curves: label -> `(radius [N], correct [N])` (e.g. a `Certification`'s fields, or any
      certificate's radii such as randomized smoothing's, abstentions as not correct).
    max_radius: right end of the axis (default: the largest radius, at least 1e-3).
    marks: radii marked by vertical lines (e.g. 36/255, 72/255, 108/255).
    num_points: grid points per curve.
    title: the figure title.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  if not curves:
    raise checks.InvjaxError("curves must name at least one (radius, correct) pair")
  if max_radius is None:
    max_radius = max([1e-3] + [float(np.max(r)) for r, _ in curves.values() if np.size(r)])
  checks.check_positive(max_radius, "max_radius")
  grid = np.linspace(0.0, float(max_radius), int(num_points))
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for label, (radius, correct) in curves.items():
    ax.plot(grid, certified_accuracy_curve(radius, correct, grid), label=label)
  for m in marks:
    ax.axvline(float(m), color="grey", lw=0.8, ls=":")
  ax.set_xlabel("l2 radius")
  ax.set_ylabel("certified accuracy")
  ax.set_ylim(0.0, 1.0)
  ax.set_title(title)
  ax.legend()
  fig.tight_layout()
  io.save_figure(fig, path)
  return path


def latent_to_image_lower_bound(latent_distance, encoder_lipschitz):
  """`latent_distance / encoder_lipschitz`: the l2 image change any latent change of that
  l2 norm needs, for an encoder with `Lip <= encoder_lipschitz` (module docstring)."""
  checks.check_positive(encoder_lipschitz, "encoder_lipschitz")
  d = np.asarray(latent_distance, np.float64)
  if np.any(~np.isfinite(d)) or np.any(d < 0):
    raise checks.InvjaxError("latent_distance must be finite and >= 0")
  return d / float(encoder_lipschitz)
