"""Lipschitz-margin certified training (Tsuzuku, Sato & Sugiyama 2018; GloRo, Leino et al. 2021).

With an l2 Lipschitz constant `L` of `x -> logits`, the difference `logit_y - logit_j` of any
two logits is `sqrt(2) L`-Lipschitz (`||e_y - e_j|| = sqrt(2)`), so a prediction whose margin
exceeds `sqrt(2) L epsilon` is certified at radius `epsilon`
(`invjax.robust.lipschitz.certified_radius`). The losses train for that margin:

* `"tsuzuku"` (Lipschitz-margin training): cross-entropy of the logits with `sqrt(2) L epsilon`
  added to every non-true logit, `CE(logits + sqrt(2) L epsilon (1 - onehot(y)), y)`; its
  argmax is `y` exactly when the margin exceeds `sqrt(2) L epsilon`. At `epsilon = 0` it is the
  plain cross-entropy.
* `"gloro"` (globally-robust networks): the logits get a bottom class `⊥` whose logit is
  `max_{j != y} (logit_j + epsilon K_yj)` with `K_yj <= sqrt(2) L` the constant of
  `logit_y - logit_j`, here `max_{j != y} logit_j + sqrt(2) L epsilon`; the loss is the
  cross-entropy over the `K + 1` logits with label `y` (`y` beats `⊥` exactly when certified).

`L` is the network's current constant computed differentiably from the parameters by
`lipschitz_estimate`: the same composition as the certificate
(`invjax.robust.certificates.certified_lipschitz`), `||A||_2 * prod_b s (1 + prod_i sigma_bi)`,
but with each layer's norm taken as the power-iteration value `sigma_bi = ||W_sn v||` for the
vector `v` the spectral layers carry in their `"spectral"` collection (advanced at every
training step). That value is a lower bound of the layer's norm which converges to it as
training runs the iterations on, so the loss trains against (an estimate of) the certified
constant at the cost of one layer application per layer, and gradients reach both the head
and the branch kernels; certificates are then computed with the provable bounds.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from invjax._src import checks
from invjax.flows import lipschitz_resnet
from invjax.flows.spectral_norm import SPECTRAL

Array = jax.Array

VARIANTS = ("tsuzuku", "gloro")
_HIGHEST = jax.lax.Precision.HIGHEST


def check_variant(variant: str) -> None:
  """Raises `InvjaxError` unless `variant` is one of `VARIANTS`."""
  if variant not in VARIANTS:
    raise checks.InvjaxError(f"margin variant must be one of {VARIANTS}, got {variant!r}")


def margin_logits(logits: Array, y: Array, *, lipschitz, epsilon: float,
                  variant: str = "tsuzuku") -> Array:
  """The logits the margin loss applies cross-entropy to (label `y`).

  Args:
    logits: float [B, K].
    y: int [B] labels.
    lipschitz: scalar `L` (an array, possibly traced and differentiated).
    epsilon: the l2 radius trained for (>= 0).
    variant: `"tsuzuku"` ([B, K]: `sqrt(2) L epsilon` added to the non-true logits) or
      `"gloro"` ([B, K + 1]: the bottom-class logit appended last).
  """
  check_variant(variant)
  checks.check_positive(epsilon, "epsilon", strict=False)
  if logits.ndim != 2 or y.shape != logits.shape[:1]:
    raise checks.InvjaxError(f"logits must be [B, K] and y [B], got {logits.shape} and {y.shape}")
  shift = jnp.sqrt(2.0) * jnp.asarray(lipschitz, logits.dtype) * epsilon
  onehot = jax.nn.one_hot(y, logits.shape[1], dtype=logits.dtype)
  if variant == "tsuzuku":
    return logits + shift * (1.0 - onehot)
  others = jnp.where(onehot > 0, -jnp.inf, logits)
  bottom = jnp.max(others, axis=1, keepdims=True) + shift
  return jnp.concatenate([logits, bottom], axis=1)


def margin_loss(logits: Array, y: Array, *, lipschitz, epsilon: float,
                variant: str = "tsuzuku") -> Array:
  """Mean softmax cross-entropy of `margin_logits` against `y` (module docstring)."""
  shifted = margin_logits(logits, y, lipschitz=lipschitz, epsilon=epsilon, variant=variant)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(shifted, y))


def head_norm(a: Array) -> Array:
  """`||A||_2` of a `[D, K]` head, differentiable: `sqrt(lambda_max(A^T A))` (a K x K
  eigenproblem)."""
  gram = jnp.dot(a.T, a, precision=_HIGHEST)
  return jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(gram)[-1], 0.0))


def lipschitz_estimate(model, variables) -> Array:
  """Differentiable estimate of the l2 constant of `x -> logits` (module docstring).

  Args:
    model: an `InvertibleClassifier` whose flow is a `LipschitzResNet` or an `IResNet`.
    variables: `{"params": ..., "spectral": ..., ...}` (e.g. the training state after a step,
      whose `"spectral"` vectors the step just advanced).

  Returns:
    scalar: `||A||_2 * prod_b s (1 + prod_i ||W_bi v_bi||)`.
  """
  flow = getattr(model, "flow", None)
  if flow is None:
    raise checks.InvjaxError(f"model must be an InvertibleClassifier, got {type(model).__name__}")
  scale = lipschitz_resnet.block_scale(flow)
  if SPECTRAL not in variables:
    raise checks.InvjaxError(f"variables have no {SPECTRAL!r} collection (got {list(variables)})")
  blocks = lipschitz_resnet.branch_layers(flow, variables["params"]["flow"],
                                          variables[SPECTRAL]["flow"])
  total = head_norm(model.apply(variables, method="linear_head")[0])
  for block in blocks:
    total = total * scale * (1.0 + jnp.prod(jnp.stack([layer.estimate for layer in block])))
  return total
