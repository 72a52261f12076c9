"""Non-parametric k-nearest-neighbour mutual-information estimators, in nats.

* `ksg_mutual_information(x, y, k=3)`: the Kraskov-Stoegbauer-Grassberger estimator
  (Kraskov et al. 2004, algorithm 1) for continuous x `[n, dx]` and y `[n, dy]`, max-norm in
  every space:
      I = psi(k) + psi(n) - < psi(n_x(i) + 1) + psi(n_y(i) + 1) >,
  with eps_i the max-norm distance of point i to its k-th neighbour in the joint space and
  n_x(i) (n_y(i)) the number of other points strictly closer than eps_i in x (in y).
* `mixed_ksg_mutual_information(x, labels, k=3)`: Ross (2014), "Mutual information between
  discrete and continuous data sets", for continuous x and integer labels:
      I = psi(n) + < psi(k_i) > - < psi(n_label(i)) > - < psi(m_i) >,
  with d_i the distance of point i to its k-th neighbour among the points of its class
  (k_i = min(k, n_label(i) - 1)) and m_i the number of points strictly closer than d_i in the
  whole data set, i itself included; points whose label occurs once are left out (as in
  scikit-learn's `mutual_info_classif`, which implements the same estimator).

Neighbours are exact: dense pairwise max-norm distances, `chunk_size` rows at a time (memory
`chunk_size * n * (dx + dy)` floats), so n = 2000 to 10^4 fits on a CPU. Written here rather
than taken from `benchmark-mi` (a JAX package implementing these estimators) because that
package pins jax<0.5 and cannot be installed next to invjax's jax.

Both return the raw estimate (it can be slightly negative for independent variables; no
clipping at 0) and are jit-compiled with `k` and `chunk_size` static.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import digamma

from invjax._src.checks import InvjaxError, check_finite, check_floating, is_concrete

Array = jax.Array


def _max_dist(a: Array, b: Array) -> Array:
  """Max-norm distances `[len(a), len(b)]` between the rows of a `[m, d]` and b `[n, d]`."""
  return jnp.max(jnp.abs(a[:, None, :] - b[None, :, :]), axis=-1)


def _row_chunks(n: int, chunk_size: int) -> Array:
  """Row indices `[num_chunks, chunk]`, the last chunk padded with index n - 1."""
  chunk = min(chunk_size, n)
  num = -(-n // chunk)
  return jnp.minimum(jnp.arange(num * chunk), n - 1).reshape(num, chunk)


def _kth_smallest(d: Array, k: int) -> Array:
  """The k smallest values of each row, ascending `[rows, k]`."""
  return -jax.lax.top_k(-d, k)[0]


@functools.partial(jax.jit, static_argnames=("k", "chunk_size"))
def _ksg(x: Array, y: Array, k: int, chunk_size: int) -> Array:
  n = x.shape[0]
  cols = jnp.arange(n)

  def counts(rows):
    dx, dy = _max_dist(x[rows], x), _max_dist(y[rows], y)
    other = rows[:, None] != cols[None, :]
    eps = _kth_smallest(jnp.where(other, jnp.maximum(dx, dy), jnp.inf), k)[:, -1:]
    nx = jnp.sum((dx < eps) & other, axis=1)
    ny = jnp.sum((dy < eps) & other, axis=1)
    return digamma(nx + 1.0) + digamma(ny + 1.0)

  psi = jax.lax.map(counts, _row_chunks(n, chunk_size)).reshape(-1)[:n]
  return digamma(float(k)) + digamma(float(n)) - jnp.mean(psi)


@functools.partial(jax.jit, static_argnames=("k", "chunk_size"))
def _mixed(x: Array, labels: Array, k: int, chunk_size: int) -> Array:
  n = x.shape[0]
  cols = jnp.arange(n)
  class_count = jnp.sum(labels[:, None] == labels[None, :], axis=1)  # [n], self included
  valid = class_count > 1

  def terms(rows):
    d = _max_dist(x[rows], x)
    is_self = rows[:, None] == cols[None, :]
    same = (labels[rows][:, None] == labels[None, :]) & ~is_self
    nearest = _kth_smallest(jnp.where(same, d, jnp.inf), k)  # [chunk, k]
    k_i = jnp.clip(jnp.minimum(k, class_count[rows] - 1), 1, k)
    radius = jnp.take_along_axis(nearest, (k_i - 1)[:, None], axis=1)
    m = jnp.sum(((d < radius) & valid[None, :]) | is_self, axis=1)
    return digamma(k_i.astype(x.dtype)) - digamma(m.astype(x.dtype))

  per_point = jax.lax.map(terms, _row_chunks(n, chunk_size)).reshape(-1)[:n]
  w = valid.astype(x.dtype)
  n_valid = jnp.sum(w)
  mean = lambda v: jnp.sum(w * v) / n_valid
  return digamma(n_valid) + mean(per_point) - mean(digamma(class_count.astype(x.dtype)))


def _as_matrix(v, name: str) -> Array:
  v = jnp.asarray(v)
  if v.ndim == 1:
    v = v[:, None]
  if v.ndim != 2:
    raise InvjaxError(f"{name} must have shape [n] or [n, d], got {v.shape}")
  check_floating(v, name)
  check_finite(v, name)
  return v


def _check_k(k, n: int, chunk_size) -> None:
  if not isinstance(k, (int, np.integer)) or k < 1:
    raise InvjaxError(f"k must be a positive integer, got {k!r}")
  if k >= n:
    raise InvjaxError(f"k={k} needs more than k samples, got n={n}")
  if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
    raise InvjaxError(f"chunk_size must be a positive integer, got {chunk_size!r}")


def ksg_mutual_information(x, y, *, k: int = 3, chunk_size: int = 256) -> Array:
  """KSG-1 estimate of I(x; y) in nats for continuous samples x `[n]`/`[n, dx]`, y `[n]`/`[n, dy]`.

  Args:
    x, y: paired samples (row i of x goes with row i of y), floating point, finite.
    k: the number of neighbours (3 is Kraskov et al.'s and scikit-learn's default).
    chunk_size: rows of the distance matrix computed at once.

  Raises:
    InvjaxError: mismatched numbers of rows, non-float or non-finite values, k < 1 or k >= n.
  """
  x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
  if x.shape[0] != y.shape[0]:
    raise InvjaxError(f"x and y must have the same number of rows, got {x.shape} and {y.shape}")
  _check_k(k, x.shape[0], chunk_size)
  dtype = jnp.result_type(x, y)
  return _ksg(x.astype(dtype), y.astype(dtype), int(k), int(chunk_size))


def mixed_ksg_mutual_information(x, labels, *, k: int = 3, chunk_size: int = 256) -> Array:
  """Ross (2014) estimate of I(x; label) in nats, x continuous `[n]`/`[n, d]`, labels int `[n]`.

  Points whose label occurs only once are ignored; a class with at most k members uses
  k_i = (its size - 1) neighbours for its points.

  Raises:
    InvjaxError: labels not an integer vector of length n, non-finite x, k < 1, k >= n, or
      fewer than two points sharing a label.
  """
  x = _as_matrix(x, "x")
  labels = jnp.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer) or labels.shape != (x.shape[0],):
    raise InvjaxError(f"labels must be integers of shape [{x.shape[0]}], got dtype "
                      f"{labels.dtype} and shape {labels.shape}")
  _check_k(k, x.shape[0], chunk_size)
  if is_concrete(labels) and np.max(np.unique(np.asarray(labels), return_counts=True)[1]) < 2:
    raise InvjaxError("mixed_ksg_mutual_information needs at least one label shared by two "
                      "points, every label occurs once")
  return _mixed(x, labels, int(k), int(chunk_size))
