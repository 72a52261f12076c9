"""Invariance (metameric) attacks (Jacobsen et al. 2019, "Excessive invariance
causes adversarial vulnerability").

An invertible classifier splits its latent code into a class-carrying part (what
the head reads) and a nuisance part (what it ignores). Keeping the class part of
`z1 = encode(x1)` and the nuisance part of `z2 = encode(x2)` and decoding gives a
*metameric* image: it usually looks like x2, yet the classifier's logits are
exactly those of x1.

Two splits:
  * `split="row_space"` (any linear head `logits = z @ A + b`): with `P` the
    orthogonal projector on the column space of A (the head's row space as a map
    z -> logits), `z_meta = P z1 + (I - P) z2`. Since `A^T (I - P) = 0`,
    `z_meta @ A + b == z1 @ A + b` exactly.
  * `split="identity_slice"` (heads that read only the first C dims, e.g. the
    "logits are the first C latent dims" model of the paper, or any non-linear
    head on `z[:, :C]`): `z_meta = concat(z1[:, :C], z2[:, C:])`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from invjax._src import checks
from invjax._src import compilation
from invjax.attacks import functional
from invjax.attacks import result as result_lib

Array = jax.Array
SPLITS = ("row_space", "identity_slice")


class MetamericResult(NamedTuple):
  """Metameric images and how far they are from both sources (all batch-first).

  Attributes:
    x_meta: [batch, ...] decoded metameric images (not clipped: a decoder may leave
      [0, 1]; `in_range` says where it did not).
    z_meta: [batch, D] their latent codes (before decoding).
    logits_x1: [batch, K] head logits of x1.
    logits_meta: [batch, K] head logits of `encode(x_meta)` (re-encoded).
    same_prediction: bool [batch], argmax(logits_meta) == argmax(logits_x1).
    l2_to_x1, linf_to_x1, l2_to_x2, linf_to_x2: [batch] image distances.
    in_range: bool [batch], x_meta inside [0, 1].
  """
  x_meta: Array
  z_meta: Array
  logits_x1: Array
  logits_meta: Array
  same_prediction: Array
  l2_to_x1: Array
  linf_to_x1: Array
  l2_to_x2: Array
  linf_to_x2: Array
  in_range: Array


def _row_space_basis(a: Array) -> Array:
  """[D, K] orthonormal basis of the column space of A (zeroed columns where rank deficient)."""
  u, s, _ = jnp.linalg.svd(a, full_matrices=False)
  tol = s.max() * max(a.shape) * jnp.finfo(a.dtype).eps
  return u * (s > tol)[None, :]


def row_space_projector(a: Array) -> Array:
  """[D, D] orthogonal projector `P = U U^T` onto the column space of the head matrix A [D, K]."""
  u = _row_space_basis(jnp.asarray(a))
  return u @ u.T


def mix_latents(z1: Array, z2: Array, *, split: str = "row_space",
                head_matrix: Optional[Array] = None, num_class_dims: Optional[int] = None) -> Array:
  """Class part of z1 + nuisance part of z2. z1, z2: [batch, D] -> [batch, D].

  "row_space": `P z1 + (I - P) z2 = z2 + U U^T (z1 - z2)` (never forms the [D, D] P).
  "identity_slice": `concat(z1[:, :C], z2[:, C:])`.
  """
  if split == "row_space":
    u = _row_space_basis(head_matrix)
    return z2 + ((z1 - z2) @ u) @ u.T
  return jnp.concatenate([z1[:, :num_class_dims], z2[:, num_class_dims:]], axis=1)


def metameric_attack(encode_fn: Callable[[Array], Array], decode_fn: Callable[[Array], Array],
                     head, x1: Array, x2: Array, *, split: str = "row_space",
                     num_class_dims: Optional[int] = None) -> MetamericResult:
  """Metameric samples: x1's class content with x2's nuisance content.

  Args:
    encode_fn: `[batch, ...] -> [batch, D]`, the bijection.
    decode_fn: its inverse.
    head: `(A [D, K], b [K])` (linear head), or a callable `z -> logits`
      (requires `split="identity_slice"`).
    x1: float [batch, ...] in [0, 1], the images whose prediction is kept.
    x2: float [batch, ...] in [0, 1], the images whose look is kept.
    split: "row_space" (linear heads) or "identity_slice".
    num_class_dims: C for `split="identity_slice"` (default: K, the number of logits).

  Returns:
    `MetamericResult`.
  """
  linear = isinstance(head, (tuple, list)) or not callable(head)
  head_fn = None if linear else functional.drop_params(head)
  return _metameric(None, functional.drop_params(encode_fn), functional.drop_params(decode_fn),
                    head, head_fn, x1, x2, split, num_class_dims)


def _metameric(params, encode, decode, head, head_fn, x1, x2, split, num_class_dims):
  """Validation, then the jitted core. encode/decode/head_fn take (params, value)."""
  checks.check_images(x1, "x1", rank=(2, 3, 4))
  checks.check_images(x2, "x2", rank=(2, 3, 4))
  if np.shape(x1) != np.shape(x2):
    raise checks.InvjaxError(
        f"x1 and x2 must have the same shape, got {np.shape(x1)} and {np.shape(x2)}")
  if split not in SPLITS:
    raise checks.InvjaxError(f"split must be one of {SPLITS}, got {split!r}")
  x1 = jnp.asarray(x1)
  x2 = jnp.asarray(x2)
  z_shape = functional.check_codec(params, encode, decode, x1, "x1")
  dim = z_shape.shape[1]
  if head_fn is None:
    if not isinstance(head, (tuple, list)):
      raise checks.InvjaxError(f"head must be (A, b) or a callable, got {type(head)}")
    a, b = (jnp.asarray(h) for h in head)
    checks.check_shape(a, (dim, None), "head A")
    checks.check_shape(b, (a.shape[1],), "head b")
    head_params, num_logits = (a, b), a.shape[1]
  else:
    if split == "row_space":
      raise checks.InvjaxError(
          "split='row_space' needs a linear head (A, b); use split='identity_slice' for a "
          "callable head that reads the first C latent dims")
    head_params = params
    num_logits = jax.eval_shape(lambda v: head_fn(params, v), z_shape).shape[-1]
  if split == "identity_slice":
    num_class_dims = num_logits if num_class_dims is None else int(num_class_dims)
    if not 0 < num_class_dims <= dim:
      raise checks.InvjaxError(f"num_class_dims must lie in [1, {dim}], got {num_class_dims}")
  return _metameric_core(params, head_params, x1, x2, encode=encode, decode=decode,
                         head_fn=head_fn, split=split, num_class_dims=num_class_dims)


@functools.partial(compilation.jit, static_argnames=("encode", "decode", "head_fn", "split",
                                             "num_class_dims"))
def _metameric_core(params, head_params, x1, x2, *, encode, decode, head_fn, split,
                    num_class_dims):
  z1 = encode(params, x1)
  z2 = encode(params, x2)
  logits_x1 = functional.apply_head(head_params, head_fn, z1)
  a = head_params[0] if head_fn is None else None
  z_meta = mix_latents(z1, z2, split=split, head_matrix=a, num_class_dims=num_class_dims)
  x_meta = decode(params, z_meta)
  logits_meta = functional.apply_head(head_params, head_fn, encode(params, x_meta))
  linf1, l21 = result_lib.distances(x1, x_meta)
  linf2, l22 = result_lib.distances(x2, x_meta)
  flat = x_meta.reshape(x_meta.shape[0], -1)
  in_range = jnp.all((flat >= 0.0) & (flat <= 1.0), axis=1)
  same = jnp.argmax(logits_meta, -1) == jnp.argmax(logits_x1, -1)
  return MetamericResult(x_meta, z_meta, logits_x1, logits_meta, same, l21, linf1, l22, linf2,
                         in_range)


def metameric_attack_from_model(model: Any, variables: Any, x1: Array, x2: Array, *,
                                split: Optional[str] = None,
                                num_class_dims: Optional[int] = None) -> MetamericResult:
  """`metameric_attack` on an `InvertibleClassifier`-style Flax module.

  Uses the model's `linear_head()` with `split="row_space"` when it has one (and no
  split is given), else its `logits` method with `split="identity_slice"`.
  Compiled once per (model, split).
  """
  if split is None:
    split = "row_space" if hasattr(model, "linear_head") else "identity_slice"
  if split == "row_space":
    head, head_fn = model.apply(variables, method="linear_head"), None
  else:
    head, head_fn = None, functional.model_method(model, "logits")
  return _metameric(variables, functional.model_method(model, "encode"),
                    functional.model_method(model, "decode"), head, head_fn, x1, x2, split,
                    num_class_dims)


def label_agreement(logits_fn: Callable[[Array], Array], x_meta: Array, y2: Array,
                    y1: Optional[Array] = None, *,
                    batch_size: int = 256) -> Tuple[float, Optional[float]]:
  """How often an independent classifier (any `logits_fn`, e.g. a CNN) follows x2's label.

  Args:
    logits_fn: `[batch, ...] -> [batch, K]`.
    x_meta: [N, ...] metameric images (clipped to [0, 1] before evaluation).
    y2: int [N] labels of the nuisance sources x2.
    y1: optional int [N] labels of the class sources x1.
    batch_size: evaluation batch size.

  Returns:
    (fraction predicted as y2, fraction predicted as y1 or None).
  """
  checks.check_rank(x_meta, (2, 3, 4), "x_meta")
  checks.check_finite(x_meta, "x_meta")
  n = int(np.shape(x_meta)[0])
  checks.check_labels(y2, n, "y2")
  if y1 is not None:
    checks.check_labels(y1, n, "y1")
  if batch_size <= 0:
    raise checks.InvjaxError(f"batch_size must be > 0, got {batch_size}")
  preds = []
  for i in range(0, n, batch_size):
    xb = jnp.clip(jnp.asarray(x_meta[i:i + batch_size]), 0.0, 1.0)
    preds.append(np.asarray(jnp.argmax(logits_fn(xb), -1)))
  pred = np.concatenate(preds) if preds else np.zeros((0,), np.int32)
  frac2 = float(np.mean(pred == np.asarray(y2))) if n else float("nan")
  frac1 = None if y1 is None else (float(np.mean(pred == np.asarray(y1))) if n else float("nan"))
  return frac2, frac1
