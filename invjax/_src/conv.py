"""`conv_general_dilated`: `lax.conv_general_dilated` whose input gradient stays fast in loops.

Why (XLA:CPU; the one place invjax explains it, jax-ml/jax#12868): JAX differentiates a
convolution with respect to its input by emitting a second convolution on the reversed
kernel with the kernel's input/output feature dimensions *swapped in the dimension numbers*
(HWIO -> "01oi"). XLA:CPU runs a convolution on its fast kernels only when the kernel is
laid out HWIO ("01io"); outside loops a canonicalisation pass inserts a transpose of the
kernel and constant-folds it, but in the body of a `while` / `fori_loop` / `scan` / `cond`
the "01oi" convolution survives and falls back to a naive loop nest, several times slower
(`bench/conv_loops.py` measures it; docs/results/attacks.md has the figures). Attack steps,
power iterations of spectral norms and Lipschitz constants, the implicit-gradient solve of
fixed-point inverses, log-det series and Carlini-Wagner all differentiate convolutions
inside loops.

This module registers a primitive `invjax_conv` that computes exactly
`lax.conv_general_dilated` and is bilinear in (input, kernel) like it, but whose transpose
with respect to the input is taken of the *same* convolution written with an explicitly
transposed kernel (`k.transpose(..., O <-> I)` and the matching dimension numbers): JAX's
own transpose rule then swaps the labels back, so the input gradient is an ordinary "01io"
convolution on a (constant-folded or cheaply transposed) kernel. Forward evaluation,
forward-mode (`jvp`) and the kernel gradient are lax's. `vmap` over the input folds the
mapped axis into the batch; any other batching falls back to `jax.vmap` of lax.

`Conv` is `flax.linen.Conv` using it (same parameters, same names: checkpoints are
interchangeable). Nothing changes on GPU/TPU except one primitive name in the jaxpr.
Escape hatch: `INVJAX_CONV_PRIMITIVE=0` (read at each call) makes `conv_general_dilated`
plain `lax.conv_general_dilated`, e.g. should a JAX release break the primitive.

Compatibility: a primitive is built on `jax.extend.core.Primitive` and the
`jax.interpreters.{ad, batching, mlir}` registries, which are outside JAX's compatibility
promise. This module is the only place invjax touches them; `tests/_src/test_conv.py`
checks values, gradients (both arguments), vmap and the in-loop dimension numbers against
lax on every run, so a JAX upgrade that breaks the primitive fails those tests loudly
instead of silently running slower.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad
from jax.interpreters import batching
from jax.interpreters import mlir
import numpy as np

ENV_SWITCH = "INVJAX_CONV_PRIMITIVE"

_PARAMS = ("window_strides", "padding", "lhs_dilation", "rhs_dilation", "dimension_numbers",
           "feature_group_count", "batch_group_count", "precision", "preferred_element_type")


def _lax_conv(lhs, rhs, **params):
  return lax.conv_general_dilated(lhs, rhs, **params)


def _swapped(rhs, dimension_numbers: lax.ConvDimensionNumbers):
  """The same kernel with its O and I axes physically swapped, and the matching numbers."""
  o_dim, i_dim = dimension_numbers.rhs_spec[:2]
  perm = list(range(rhs.ndim))
  perm[o_dim], perm[i_dim] = i_dim, o_dim
  spec = (i_dim, o_dim) + tuple(dimension_numbers.rhs_spec[2:])
  numbers = lax.ConvDimensionNumbers(dimension_numbers.lhs_spec, spec,
                                     dimension_numbers.out_spec)
  return jax.numpy.transpose(rhs, perm), numbers


conv_p = Primitive("invjax_conv")
conv_p.def_impl(_lax_conv)


def _abstract_eval(lhs, rhs, **params):
  out = jax.eval_shape(functools.partial(_lax_conv, **params),
                       jax.ShapeDtypeStruct(lhs.shape, lhs.dtype),
                       jax.ShapeDtypeStruct(rhs.shape, rhs.dtype))
  return jax.core.ShapedArray(out.shape, out.dtype)


conv_p.def_abstract_eval(_abstract_eval)
mlir.register_lowering(conv_p, mlir.lower_fun(_lax_conv, multiple_results=False))


def _transpose_lhs(ct, lhs, rhs, **params):
  """d(lhs) of `ct`: lax's transpose of the O/I-swapped form, an HWIO-style convolution."""
  aval = lhs.aval
  if type(ct) is ad.Zero:  # pylint: disable=unidiomatic-typecheck
    return ad.Zero(aval)
  rhs_t, numbers = _swapped(rhs, params["dimension_numbers"])
  swapped = dict(params, dimension_numbers=numbers)
  transpose = jax.linear_transpose(lambda v: _lax_conv(v, rhs_t, **swapped),
                                   jax.ShapeDtypeStruct(aval.shape, aval.dtype))
  return transpose(ct)[0]


def _transpose_rhs(ct, lhs, rhs, **params):
  """d(rhs) of `ct`: lax's own kernel-gradient convolution."""
  aval = rhs.aval
  if type(ct) is ad.Zero:  # pylint: disable=unidiomatic-typecheck
    return ad.Zero(aval)
  transpose = jax.linear_transpose(lambda k: _lax_conv(lhs, k, **params),
                                   jax.ShapeDtypeStruct(aval.shape, aval.dtype))
  return transpose(ct)[0]


ad.defbilinear(conv_p, _transpose_lhs, _transpose_rhs)


def _batch(args, dims, **params):
  lhs, rhs = args
  lhs_dim, rhs_dim = dims
  numbers = params["dimension_numbers"]
  if rhs_dim is None and params["batch_group_count"] == 1:
    # Fold the mapped axis into the convolution's batch axis, then split it out again.
    n_dim, out_n_dim = numbers.lhs_spec[0], numbers.out_spec[0]
    size = lhs.shape[lhs_dim]
    lhs = jax.numpy.moveaxis(lhs, lhs_dim, n_dim)
    shape = lhs.shape
    lhs = lhs.reshape(shape[:n_dim] + (shape[n_dim] * shape[n_dim + 1],) + shape[n_dim + 2:])
    out = conv_p.bind(lhs, rhs, **params)
    out_shape = out.shape
    out = out.reshape(out_shape[:out_n_dim] + (size, out_shape[out_n_dim] // size)
                      + out_shape[out_n_dim + 1:])
    return out, out_n_dim
  in_axes = (None if lhs_dim is None else lhs_dim,
             None if rhs_dim is None else rhs_dim)
  return jax.vmap(functools.partial(_lax_conv, **params), in_axes=in_axes)(lhs, rhs), 0


batching.primitive_batchers[conv_p] = _batch


def enabled() -> bool:
  """False when `INVJAX_CONV_PRIMITIVE=0` (read at every call, like the XLA option switch)."""
  return os.environ.get(ENV_SWITCH, "1") != "0"


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int],
                         padding: Union[str, Sequence[tuple[int, int]]],
                         lhs_dilation: Optional[Sequence[int]] = None,
                         rhs_dilation: Optional[Sequence[int]] = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
  """Drop-in for `lax.conv_general_dilated` (same arguments, same values and derivatives)."""
  if not enabled():
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type)
  lhs = jax.numpy.asarray(lhs)
  rhs = jax.numpy.asarray(rhs)
  spatial = lhs.ndim - 2
  numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  if lhs.dtype != rhs.dtype or (isinstance(padding, str) and lhs_dilation is not None
                                and any(d != 1 for d in lhs_dilation)):
    # lax refuses these (mixed dtypes; string padding of a transposed convolution): let it
    # say so with its own message.
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type)
  if isinstance(padding, str):
    # Resolve "SAME"/"VALID" here so the primitive's parameters are explicit and hashable.
    in_spatial = [lhs.shape[d] for d in numbers.lhs_spec[2:]]
    window = [rhs.shape[d] for d in numbers.rhs_spec[2:]]
    if rhs_dilation is not None:
      window = [(w - 1) * d + 1 for w, d in zip(window, rhs_dilation)]
    padding = lax.padtype_to_pads(in_spatial, window, window_strides, padding)
  params = dict(
      window_strides=tuple(int(s) for s in window_strides),
      padding=tuple((int(lo), int(hi)) for lo, hi in padding),
      lhs_dilation=tuple(lhs_dilation) if lhs_dilation is not None else (1,) * spatial,
      rhs_dilation=tuple(rhs_dilation) if rhs_dilation is not None else (1,) * spatial,
      dimension_numbers=numbers, feature_group_count=int(feature_group_count),
      batch_group_count=int(batch_group_count),
      precision=tuple(precision) if isinstance(precision, list) else precision,
      preferred_element_type=(None if preferred_element_type is None
                              else np.dtype(preferred_element_type)))
  return conv_p.bind(lhs, rhs, **params)


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
Conv.__doc__ = ("`flax.linen.Conv` computing with `invjax._src.conv.conv_general_dilated` "
                "(same parameters and names).")
