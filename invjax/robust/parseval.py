"""Parseval networks (Cisse, Bojanowski, Grave, Dauphin & Usunier 2017): the orthogonality
retraction and the simplex projection of aggregation weights, as one optax transformation.

A Parseval layer keeps its weight matrix W (shape `[out, in]`, rows = output units) a
Parseval tight frame: every non-zero singular value is 1, so the layer is 1-Lipschitz in l2
and does not shrink the directions it keeps. After each optimiser step the paper performs one
gradient step on `R(W) = 1/4 ||W W^T - I||_F^2`, whose gradient is `(W W^T - I) W`:

    W <- (1 + beta) W - beta W W^T W                                   (paper, Sec. 4)

On the singular values this is `s <- s + beta s (1 - s^2)`: s = 1 is a fixed point with
derivative `1 - 2 beta`, so it attracts for 0 < beta < 1. `beta = 1/2` is the Newton-Schulz
(Bjorck) orthogonalisation step: the derivative vanishes (quadratic convergence, for s in
(0, sqrt(3))), and `f(s) = 1.5 s - 0.5 s^3` has its maximum 1 at s = 1, so after one step
EVERY singular value is <= 1 (the Lipschitz side), whatever the optimiser proposed (as long
as s <= 2, where f stays >= -1). A smaller beta leaves a singular value s > 1 at about
`1 + (1 - 2 beta) (s - 1)`: the bound then holds only approximately, after many steps. W W^T W = W (W^T W): the product is computed in the cheaper order.

Convolutions (paper, Sec. 3 and 4). The kernel is reshaped to the matrix
`W = reshape(kernel, [k*k*in, out])^T` (HWIO kernels: one row per output channel, one
column per input position of the patch). A convolution is `x -> W U(x)` where the unfolding
U stacks the patches; an input pixel lies in at most `|Delta| = prod_i ceil(k_i / s_i)`
patches (stride s, zero padding adds no pixel), so `||U(x)||^2 <= |Delta| ||x||^2` and
`Lip(conv) <= sqrt(|Delta|) ||W||_2`. The retraction therefore keeps `sqrt(|Delta|) W` a
Parseval tight frame (`W W^T = I / |Delta|`, as the paper's rescaling by `1/sqrt(|Delta|)`),
which bounds the convolution's Lipschitz constant by 1. The default factor is the kernel
area `k*k` (`conv_factor=kernel_area`), which is >= prod ceil(k/s) for every stride: the
bound holds for strided convolutions too, conservatively; pass `conv_factor` for the exact
stride-aware factor (`kernel_factor`). For convolutions the update may act on a random
subset S of the rows only (`row_fraction`; paper: "randomly select a subset S of rows",
cost O(|S|^2 d) instead of O(out^2 d)): the rows outside S are left exactly as they are, so
the per-step bound above holds for the sampled rows only (a Monte Carlo approximation of the
full step, which `row_fraction=1` is).
The rows are drawn with the key carried in the transformation's state (one split per step).

Aggregation (paper, Sec. 4): a residual block outputs a convex combination
`sum_i alpha_i f_i(x)` of its branches; with alpha on the probability simplex its Lipschitz
constant is <= max_i Lip(f_i). Leaves marked "simplex" are projected onto the simplex after
each step (Euclidean projection, Duchi et al. 2008; optax.projections.projection_simplex).

`parseval_retraction(...)` is chained LAST (after the optimiser): it sees the parameters
and the proposed updates and returns updates such that `params + updates` is the retraction
(or projection) of `params + proposed`; other leaves pass through. `layer_singular_values`
measures the matrices the retraction constrains.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from invjax._src import checks

Array = jax.Array
# (names of the leaf's path, leaf) -> "dense" | "conv" | "simplex" | None (untouched)
ParamFilter = Callable[[Tuple[str, ...], Array], Optional[str]]
KINDS = ("dense", "conv", "simplex")
AGGREGATION = "aggregation"  # the parameter name of convex aggregation weights


def retract(w: Array, beta: float = 0.5) -> Array:
  """One retraction step `(1 + beta) W - beta W W^T W` of a matrix `[rows, cols]`."""
  checks.check_rank(w, 2, "w")
  rows, cols = w.shape
  cubic = (w @ w.T) @ w if rows <= cols else w @ (w.T @ w)
  return (1.0 + beta) * w - beta * cubic


def kernel_area(names: Tuple[str, ...], kernel: Array) -> float:
  """The default `conv_factor`: `k_h * k_w` of an HWIO kernel (>= |Delta| for any stride)."""
  del names
  return float(kernel.shape[0] * kernel.shape[1])


def kernel_factor(kernel_size: Sequence[int], strides: Sequence[int] | int = 1) -> int:
  """|Delta| = prod_i ceil(k_i / s_i): the most patches an input pixel belongs to."""
  strides = (strides,) * len(kernel_size) if isinstance(strides, int) else tuple(strides)
  if len(strides) != len(kernel_size) or min(kernel_size) < 1 or min(strides) < 1:
    raise checks.InvjaxError(f"kernel_size {tuple(kernel_size)} and strides {strides} must be "
                             "positive and of the same length")
  return int(np.prod([math.ceil(k / s) for k, s in zip(kernel_size, strides)]))


def conv_matrix(kernel: Array, factor: float) -> Array:
  """HWIO kernel -> `sqrt(factor) * W`, W of shape `[out, k_h * k_w * in]` (paper, Sec. 4.1)."""
  checks.check_rank(kernel, 4, "kernel")
  return math.sqrt(factor) * kernel.reshape(-1, kernel.shape[-1]).T


def conv_kernel(matrix: Array, factor: float, shape: Sequence[int]) -> Array:
  """The inverse of `conv_matrix`: `[out, k_h * k_w * in]` -> HWIO kernel of `shape`."""
  return (matrix.T / math.sqrt(factor)).reshape(tuple(shape))


def default_param_filter(names: Tuple[str, ...], leaf: Array) -> Optional[str]:
  """Flax names: a "kernel" of rank 2 is a dense layer (`[in, out]`), of rank 4 an HWIO
  convolution; an "aggregation" vector is kept on the simplex; everything else (biases,
  normalisation scales, ...) is untouched."""
  name = names[-1] if names else ""
  if name == "kernel" and leaf.ndim in (2, 4):
    return "dense" if leaf.ndim == 2 else "conv"
  if name == AGGREGATION and leaf.ndim == 1:
    return "simplex"
  return None


def project_simplex(v: Array) -> Array:
  """Euclidean projection of a vector onto the probability simplex {a >= 0, sum a = 1}."""
  checks.check_rank(v, 1, "v")
  checks.check_floating(v, "v")
  return optax.projections.projection_simplex(v)


def _names(path) -> Tuple[str, ...]:
  out = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        out.append(str(getattr(entry, attr)))
        break
    else:
      out.append(str(entry))
  return tuple(out)


def _labelled(tree, param_filter: ParamFilter):
  """[(names, kind)] per leaf of `tree` (in tree order) and the tree's structure."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  labels = []
  for path, leaf in leaves:
    names = _names(path)
    kind = param_filter(names, leaf)
    if kind is not None and kind not in KINDS:
      raise checks.InvjaxError(f"param_filter returned {kind!r} for {'/'.join(names)}; "
                               f"expected one of {KINDS} or None")
    labels.append((names, kind))
  return [leaf for _, leaf in leaves], labels, treedef


def _retract_conv(kernel: Array, beta: float, factor: float, num_rows: int,
                  key: Array) -> Array:
  """The retraction of `conv_matrix(kernel, factor)`, or of the sub-matrix of `num_rows`
  random rows (output channels), the other channels returned exactly as they are."""
  if num_rows >= kernel.shape[-1]:
    return conv_kernel(retract(conv_matrix(kernel, factor), beta), factor, kernel.shape)
  rows = jax.random.permutation(key, kernel.shape[-1])[:num_rows]
  sub = retract(conv_matrix(kernel[..., rows], factor), beta)
  return kernel.at[..., rows].set(conv_kernel(sub, factor, kernel.shape[:-1] + (num_rows,)))


class ParsevalState(NamedTuple):
  """State of `parseval_retraction`: the key the convolution rows are drawn with."""
  key: Array


def parseval_retraction(*, key: Array, beta: float = 0.5, row_fraction: float = 1.0,
                        param_filter: ParamFilter = default_param_filter,
                        conv_factor: Callable[[Tuple[str, ...], Array], float] = kernel_area
                        ) -> optax.GradientTransformation:
  """The Parseval constraints as an optax transformation, to chain AFTER the optimiser.

  `updates, state = tx.update(proposed, state, params)` returns updates with
  `params + updates == retract(params + proposed)` (to float rounding) on Parseval leaves,
  `== project_simplex(params + proposed)` on "simplex" leaves, and `proposed` elsewhere.

  Args:
    key: PRNG key of the row sampling (split once per step, carried in the state).
    beta: retraction strength in (0, 1); 1/2 (Newton-Schulz) brings every singular value
      back to <= 1 in one step (module docstring).
    row_fraction: fraction of a convolution's rows (output channels) retracted per step, in
      (0, 1]; `ceil(row_fraction * out)` rows, drawn without replacement. Dense layers are
      always retracted whole.
    param_filter: `(names, leaf) -> "dense" | "conv" | "simplex" | None`
      (`default_param_filter`: flax "kernel" leaves of rank 2 / 4 and "aggregation" vectors).
    conv_factor: `(names, kernel) -> |Delta|`, the scale of a convolution's matrix
      (`kernel_area`; `kernel_factor(kernel_size, strides)` is the exact value).
  """
  checks.check_in_open_interval(beta, 0.0, 1.0, "beta")
  if not 0.0 < float(row_fraction) <= 1.0:
    raise checks.InvjaxError(f"row_fraction must lie in (0, 1], got {row_fraction}")
  if not callable(param_filter) or not callable(conv_factor):
    raise checks.InvjaxError("param_filter and conv_factor must be callables")

  def init_fn(params):
    del params
    return ParsevalState(key=jnp.asarray(key))

  def update_fn(updates, state, params=None):
    if params is None:
      raise checks.InvjaxError("parseval_retraction needs the parameters: call "
                               "update(updates, state, params)")
    new_key, step_key = jax.random.split(state.key)
    param_leaves, labels, treedef = _labelled(params, param_filter)
    update_leaves = treedef.flatten_up_to(updates)
    out = []
    for i, (p, u, (names, kind)) in enumerate(zip(param_leaves, update_leaves, labels)):
      if kind is None:
        out.append(u)
        continue
      proposed = p + u
      if kind == "dense":
        new = retract(proposed.T, beta).T
      elif kind == "conv":
        factor = float(conv_factor(names, p))
        checks.check_positive(factor, f"conv_factor of {'/'.join(names)}")
        num_rows = max(1, math.ceil(float(row_fraction) * p.shape[-1]))
        new = _retract_conv(proposed, beta, factor, num_rows, jax.random.fold_in(step_key, i))
      else:
        new = project_simplex(proposed)
      out.append((new - p).astype(u.dtype))
    return jax.tree_util.tree_unflatten(treedef, out), ParsevalState(key=new_key)

  return optax.GradientTransformation(init_fn, update_fn)


def layer_singular_values(params, *, param_filter: ParamFilter = default_param_filter,
                          conv_factor: Callable[[Tuple[str, ...], Array], float] = kernel_area
                          ) -> Dict[str, np.ndarray]:
  """{"a/b/kernel": singular values} of every dense / conv matrix the retraction constrains
  (dense: `kernel^T`; conv: `conv_matrix(kernel, conv_factor)`), largest first."""
  leaves, labels, _ = _labelled(params, param_filter)
  out = {}
  for leaf, (names, kind) in zip(leaves, labels):
    if kind == "dense":
      matrix = jnp.asarray(leaf).T
    elif kind == "conv":
      matrix = conv_matrix(jnp.asarray(leaf), float(conv_factor(names, leaf)))
    else:
      continue
    out["/".join(names)] = np.asarray(jnp.linalg.svd(matrix, compute_uv=False))
  return out
