"""Invertible classifier: a flow `x -> z` followed by a linear head on the latent.

  clf = make_classifier(flow, num_classes=10, input_shape=(32, 32, 3), head="slice")
  variables = clf.init(key, x)
  logits, z, log_det = clf.apply(variables, x)              # z flat [B, D]
  z = clf.apply(variables, x, method="encode")               # [B, D]
  x = clf.apply(variables, z, method="decode")               # [B, H, W, C]
  A, b = clf.apply(variables, method="linear_head")          # logits(z) = z @ A + b

Heads (`head=`):
  "slice":          logits = z[:, :k] @ W + b on the first k latent dims (k = `slice_dims`,
                    default all D);
  "pooled":         logits = mean_{h,w}(z_nhwc) @ W + b (the latent must be NHWC);
  "identity_slice": logits = z[:, :num_classes], no parameters: the fully invertible
                    design of Jacobsen et al. (2019) where the first C latent dims ARE
                    the logits and the rest is the nuisance.
For every head `linear_head()` returns (A [D, num_classes], b [num_classes]) with
`logits(z) == z @ A + b` (up to float rounding; exactly for "identity_slice"), which
the latent attacks use for closed-form minimal-norm steps.

The flow follows the invjax flow contract (`__call__(x) -> (y, log_det)`,
`inverse(y) -> (x, log_det_inv)`); its rngs / mutable collections (e.g. i-ResNet's
`rngs={"logdet": key}`, `mutable=["spectral"]`) pass through `apply`. The images of
`apply` / `encode` and the latent of `decode` must be floating point; when they are concrete
(outside `jit`) and the classifier is the top-level module, a NaN or infinite value raises
`InvjaxError` (the flow, nested inside, does not check again).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from invjax._src.checks import InvjaxError, check_flow_input
from invjax.flows.multiscale import bits_per_dim, standard_normal_logpdf

HEADS = ("slice", "pooled", "identity_slice")
_HIGHEST = jax.lax.Precision.HIGHEST


class InvertibleClassifier(nn.Module):
  """A flow followed by a linear head on (part of) its flattened latent.

  Attributes:
    flow: an invjax flow module (NHWC input; flat `[B, D]` or NHWC latent).
    num_classes: number of classes C.
    head: "slice", "pooled" or "identity_slice" (see the module docstring).
    slice_dims: k, the number of leading latent dims the "slice" head reads
      (None: all of them).
    latent_shape: the flow's per-example latent shape, e.g. `(3072,)` or
      `(8, 8, 48)`. Needed by `decode` (to unflatten z) and `linear_head` (to
      know D); `make_classifier` fills it in. When None, `decode` passes the flat
      z to the flow unchanged (right for flows with a flat latent such as Glow).
  """
  flow: nn.Module
  num_classes: int
  head: str = "slice"
  slice_dims: Optional[int] = None
  latent_shape: Optional[Tuple[int, ...]] = None

  def setup(self):
    if self.head not in HEADS:
      raise InvjaxError(f"head must be one of {HEADS}, got '{self.head}'")
    if self.num_classes < 2:
      raise InvjaxError(f"num_classes must be >= 2, got {self.num_classes}")
    if self.slice_dims is not None and (self.head != "slice" or self.slice_dims < 1):
      raise InvjaxError(f"slice_dims ({self.slice_dims}) must be >= 1 and needs head='slice'")
    if self.head != "identity_slice":
      self.dense = nn.Dense(self.num_classes, precision=_HIGHEST)

  # -- shapes

  def _dim(self) -> Optional[int]:
    return None if self.latent_shape is None else int(np.prod(self.latent_shape))

  def _check_latent(self, z) -> None:
    if self.latent_shape is not None and tuple(z.shape[1:]) != tuple(self.latent_shape):
      raise InvjaxError(
          f"the flow's latent has per-example shape {tuple(z.shape[1:])} but latent_shape="
          f"{tuple(self.latent_shape)}; build the classifier with make_classifier(...)")

  # -- methods

  def encode(self, x):
    """x NHWC `[B, H, W, C]` -> flat latent z `[B, D]`."""
    check_flow_input(self, x, "x")
    z, _ = self.flow(x)
    self._check_latent(z)
    return z.reshape(z.shape[0], -1)

  def decode(self, z):
    """Flat latent z `[B, D]` -> x `[B, H, W, C]` through the flow's inverse."""
    if z.ndim != 2:
      raise InvjaxError(f"decode expects a flat latent z of shape [batch, D], got {z.shape}")
    check_flow_input(self, z, "z")
    if self.latent_shape is not None:
      if z.shape[1] != self._dim():
        raise InvjaxError(f"z must have {self._dim()} dims (latent_shape "
                          f"{tuple(self.latent_shape)}), got {z.shape}")
      z = z.reshape((z.shape[0],) + tuple(self.latent_shape))
    x, _ = self.flow.inverse(z)
    return x

  def logits(self, z):
    """Logits `[B, num_classes]` of a flat latent z `[B, D]` (or of a latent-shaped z)."""
    if z.ndim == 2 and self.head == "pooled":
      if self.latent_shape is None or len(self.latent_shape) != 3:
        raise InvjaxError(
            "head='pooled' needs an NHWC latent: set latent_shape=(H, W, C) (make_classifier "
            f"does), got latent_shape={self.latent_shape}")
      z = z.reshape((z.shape[0],) + tuple(self.latent_shape))
    if self.head == "pooled":
      if z.ndim != 4:
        raise InvjaxError(f"head='pooled' needs an NHWC latent, got shape {z.shape}")
      return self.dense(jnp.mean(z, axis=(1, 2)))
    zf = z.reshape(z.shape[0], -1)
    if self.head == "identity_slice":
      if zf.shape[1] < self.num_classes:
        raise InvjaxError(f"identity_slice needs D >= num_classes={self.num_classes}, "
                          f"got D={zf.shape[1]}")
      return zf[:, :self.num_classes]
    k = zf.shape[1] if self.slice_dims is None else self.slice_dims
    if k > zf.shape[1]:
      raise InvjaxError(f"slice_dims={k} exceeds the latent dimension {zf.shape[1]}")
    return self.dense(zf[:, :k])

  def __call__(self, x):
    """x -> (logits [B, C], flat z [B, D], log_det [B])."""
    check_flow_input(self, x, "x")
    z, log_det = self.flow(x)
    self._check_latent(z)
    return self.logits(z), z.reshape(z.shape[0], -1), log_det

  def linear_head(self) -> Tuple[jax.Array, jax.Array]:
    """(A [D, num_classes], b [num_classes]) with `logits(z) == z @ A + b`."""
    c = self.num_classes
    if self.head == "identity_slice":
      d = self._require_dim()
      return jnp.eye(d, c, dtype=jnp.float32), jnp.zeros((c,), jnp.float32)
    params = self.dense.variables.get("params", {})
    if "kernel" not in params:
      raise InvjaxError("linear_head needs initialised head parameters (call init first)")
    w, b = params["kernel"], params["bias"]
    if self.head == "slice":
      d = w.shape[0] if self.slice_dims is None and self.latent_shape is None else (
          self._require_dim())
      return jnp.zeros((d, c), w.dtype).at[:w.shape[0]].set(w), b
    h, wd, ch = self.latent_shape  # validated by logits() at init
    pool = jnp.tile(jnp.eye(ch, dtype=w.dtype) / (h * wd), (h * wd, 1))  # [H*W*C, C]
    return jnp.dot(pool, w, precision=_HIGHEST), b

  def _require_dim(self) -> int:
    if self.latent_shape is None:
      raise InvjaxError("linear_head needs latent_shape (the flow's per-example latent "
                        "shape); build the classifier with make_classifier(...)")
    return self._dim()


def latent_shape_of(flow: nn.Module, input_shape: Sequence[int]) -> Tuple[int, ...]:
  """The per-example latent shape of `flow` on inputs of per-example shape `input_shape`.

  Traced abstractly with `jax.eval_shape` (no FLOPs, no parameters materialised).
  """
  x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)
  keys = {name: jax.random.PRNGKey(0) for name in ("params", "logdet", "dropout")}
  (z, _), _ = jax.eval_shape(lambda x: flow.init_with_output(keys, x), x)
  return tuple(int(s) for s in z.shape[1:])


def make_classifier(flow: nn.Module, num_classes: int, input_shape: Sequence[int],
                    head: str = "slice", slice_dims: Optional[int] = None
                    ) -> InvertibleClassifier:
  """An `InvertibleClassifier` with `latent_shape` computed from `input_shape` (H, W, C)."""
  if head not in HEADS:
    raise InvjaxError(f"head must be one of {HEADS}, got '{head}'")
  return InvertibleClassifier(flow=flow, num_classes=num_classes, head=head,
                              slice_dims=slice_dims,
                              latent_shape=latent_shape_of(flow, input_shape))


# ----------------------------------------------------------------------------- losses


def cross_entropy(logits, labels) -> jax.Array:
  """Mean softmax cross-entropy of `logits [B, C]` against integer `labels [B]`."""
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise InvjaxError(f"cross_entropy: logits must be [B, C] and labels [B], got "
                      f"{logits.shape} and {labels.shape}")
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def nll_bits_per_dim(z, log_det, *, num_bins: int = 256) -> jax.Array:
  """Per-example bits/dim `[B]` of data quantised to `num_bins` levels.

  Assumes the flow's input is the dequantised image `(k + u) / num_bins`,
  `u ~ U[0, 1)`, so `-log2 P(k) <= (-log p(x) + D log num_bins) / log 2`, with
  `log p(x) = log N(z; 0, I) + log_det`.
  """
  log_px = standard_normal_logpdf(z) + log_det
  return bits_per_dim(log_px, int(np.prod(z.shape[1:])), num_bins)


def hybrid_loss(logits, labels, z, log_det, *, nll_weight: float = 0.0,
                num_bins: int = 256) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """CE + nll_weight * mean bits/dim (a hybrid generative/discriminative objective).

  Returns (loss, metrics) with metrics "ce", "bits_per_dim" and "accuracy".
  `nll_weight = 0` gives the plain classifier loss (bits/dim is still reported).
  """
  ce = cross_entropy(logits, labels)
  bpd = jnp.mean(nll_bits_per_dim(z, log_det, num_bins=num_bins))
  acc = jnp.mean(jnp.argmax(logits, -1) == labels)
  loss = ce + nll_weight * bpd if nll_weight else ce
  return loss, {"ce": ce, "bits_per_dim": bpd, "accuracy": acc}
