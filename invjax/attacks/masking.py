"""Gradient masking checks for invertible networks: gradient attacks against Square.

A classifier that runs an optimisation loop in its forward pass, e.g. the generative direction
of a residual flow `logits(x) = head(F^{-1}(x))` with `F` an i-ResNet whose inverse is a
fixed-point iteration, is what RobustBench excludes: the attack's gradient depends on how the
loop is differentiated, and a poorly differentiated loop makes the model look robust. This
module attacks such a model with APGD under several *backward* passes of the same forward
function, and with Square (scores only, no gradient):

  "implicit":  the implicit-function-theorem derivative of the converged inverse
               (`invjax.flows.fixed_point_implicit`, what the i-ResNet inverse uses);
  "unrolled":  the derivative of a fixed number of iterations (`inverse_transform(...,
               unroll=n)`), forward value still the converged inverse;
  "bpda":      straight-through (Athalye et al. 2018): the backward pass of `F^{-1}` replaced
               by the identity;
  "analytic":  for an exactly invertible flow (i-RevNet, Glow), the derivative of its analytic
               inverse (or of its forward map, for `head(F(x))`).

Every variant has the forward value of the true model (`x + stop_gradient(true - x)` around
the surrogate), so the variants differ only in their gradients, and every adversarial is judged
on the true model (`model_fn`). `masking_report` returns the robust accuracy per method and
flags a method whose robust accuracy exceeds Square's by more than `threshold`: "gradient
attack weaker than Square: masked gradients" (a `GradientMaskingWarning`, also recorded).

  grads = masking.iresnet_inverse_classifiers(flow, variables, head, num_unrolled=10)
  report = masking.masking_report(grads["implicit"], x, y, key=key, epsilon=8 / 255,
                                  gradients=grads)
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, Mapping, Optional, Tuple
import warnings

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from invjax._src import checks
from invjax._src.geometry import NORMS
from invjax.attacks.ensemble import Step, confirm, predict, resolve_attacks
from invjax.attacks import inputs

LogitsFn = inputs.LogitsFn
Head = Callable[[jax.Array], jax.Array]


class GradientMaskingWarning(UserWarning):
  """A gradient attack was weaker than the gradient-free Square attack on the same model."""


def with_value_of(surrogate: Callable, true: Callable) -> Callable:
  """`v -> surrogate(v) + stop_gradient(true(v) - surrogate(v))`: `true`'s value, `surrogate`'s
  derivative."""
  def fn(v):
    s = surrogate(v)
    return s + lax.stop_gradient(true(v) - s)
  return fn


def straight_through(fn: Callable) -> Callable:
  """BPDA with the identity: `fn`'s value, the identity as its Jacobian (input reshaped to the
  output's shape, so both must have as many entries per example)."""
  def out(v):
    value = fn(v)
    v = v.reshape(value.shape)
    return v + lax.stop_gradient(value - v)
  return out


def _head_of(inverse: Callable, head: Head) -> LogitsFn:
  return lambda x: head(inverse(x))


def iresnet_inverse_classifiers(flow, variables, head: Head, *, num_unrolled: int = 20,
                                latent_shape: Optional[Tuple[int, ...]] = None
                                ) -> Dict[str, LogitsFn]:
  """`head(F^{-1}(x))` for an i-ResNet `flow` under the backward passes "implicit", "unrolled"
  (`num_unrolled` iterations per block) and "bpda"; every one has the converged inverse's value.

  Args:
    flow: an `invjax.flows.iresnet.IResNet` (or block) with `inverse_transform`.
    variables: its variables (spectral norms converged).
    head: latent-free classifier on the inverse's output, `[batch, ...] -> logits`.
    num_unrolled: iterations differentiated through by "unrolled".
    latent_shape: per-example shape the inverse takes (default: that of x).
  """
  inputs.check_positive_int(num_unrolled, "num_unrolled")
  shape = lambda x: x if latent_shape is None else x.reshape((x.shape[0],) + tuple(latent_shape))
  implicit = lambda x: flow.apply(variables, shape(x), method="inverse_transform")[0]
  unrolled = lambda x: flow.apply(variables, shape(x), method="inverse_transform",
                                  unroll=num_unrolled)[0]
  return {"implicit": _head_of(implicit, head),
          "unrolled": _head_of(with_value_of(unrolled, implicit), head),
          "bpda": _head_of(straight_through(implicit), head)}


def flow_inverse_classifiers(flow, variables, head: Head, *,
                             latent_shape: Optional[Tuple[int, ...]] = None
                             ) -> Dict[str, LogitsFn]:
  """`head(F^{-1}(x))` for an exactly invertible flow (`flow.apply(v, z, method="inverse")`,
  e.g. i-RevNet, Glow): "analytic" (through the analytic inverse) and "bpda"."""
  shape = lambda x: x if latent_shape is None else x.reshape((x.shape[0],) + tuple(latent_shape))
  inverse = lambda x: flow.apply(variables, shape(x), method="inverse")[0]
  return {"analytic": _head_of(inverse, head), "bpda": _head_of(straight_through(inverse), head)}


def flow_forward_classifier(flow, variables, head: Head, *, method: Optional[str] = None
                            ) -> LogitsFn:
  """`head(F(x))`: the flow's forward map (its first output; `method` e.g. "transform")."""
  def forward(x):
    out = flow.apply(variables, x) if method is None else flow.apply(variables, x,
                                                                     method=method)
    return head(out[0] if isinstance(out, tuple) else out)
  return forward


@dataclasses.dataclass(frozen=True)
class MaskingReport:
  """Robust accuracy per method ("square" included), each gradient method's gap to Square
  (robust accuracy minus Square's; positive: weaker than Square) and the flags raised."""
  norm: str
  epsilon: float
  num_examples: int
  clean_accuracy: float
  robust_accuracy: Dict[str, float]
  gap_to_square: Dict[str, float]
  threshold: float
  flags: Tuple[str, ...]
  seconds: Dict[str, float]

  @property
  def masked(self) -> bool:
    """Whether even the strongest gradient method is weaker than Square by > threshold."""
    return bool(self.gap_to_square) and min(self.gap_to_square.values()) > self.threshold

  def to_json(self) -> Dict[str, Any]:
    out = dataclasses.asdict(self)
    out["flags"] = list(self.flags)
    out["masked"] = self.masked
    return out


def masking_report(model_fn: LogitsFn, x, y, *, key: jax.Array, epsilon: float,
                   gradients: Mapping[str, LogitsFn], norm: str = "linf",
                   attacks: Optional[Mapping[str, Callable]] = None,
                   apgd_kwargs: Optional[Mapping[str, Any]] = None,
                   square_kwargs: Optional[Mapping[str, Any]] = None,
                   threshold: float = 0.05) -> MaskingReport:
  """APGD through each of `gradients`, and Square, on `model_fn`; flags masked gradients.

  Args:
    model_fn: the true model (every adversarial is judged on it; Square queries it).
    x, y: inputs in [0, 1] and labels.
    key: PRNG key.
    epsilon: the budget.
    gradients: method name -> surrogate `logits_fn` whose gradients APGD follows (with
      `model_fn`'s value, see the module docstring).
    norm: "linf" or "l2".
    attacks: registry overrides for "apgd" and "square" (as `autoattack`'s).
    apgd_kwargs, square_kwargs: budgets (defaults: CE loss, 100 steps; 5,000 queries).
    threshold: a robust-accuracy gap to Square above this flags the method (fraction).

  Returns:
    `MaskingReport`.
  """
  inputs.validate(model_fn, x, y, epsilon=epsilon, choices=(("norm", norm, NORMS),))
  if not gradients:
    raise checks.InvjaxError("gradients must name at least one surrogate logits_fn")
  checks.check_positive(threshold, "threshold", strict=False)
  steps = [Step("apgd", "apgd", {}), Step("square", "square", {})]
  registry = resolve_attacks(steps, attacks)
  apgd_kwargs = dict(dict(loss="ce", num_steps=100), **(apgd_kwargs or {}))
  square_kwargs = dict(dict(num_queries=5000), **(square_kwargs or {}))
  x, y, epsilon = np.asarray(x, np.float32), np.asarray(y).astype(np.int32), float(epsilon)
  correct = np.argmax(predict(model_fn, x), axis=1) == y
  robust, seconds = {}, {}
  runs = [(name, registry["apgd"], fn, apgd_kwargs) for name, fn in gradients.items()]
  runs.append(("square", registry["square"], model_fn, square_kwargs))
  for i, (name, attack, fn, budget) in enumerate(runs):
    t0 = time.time()
    result = attack(fn, jnp.asarray(x), jnp.asarray(y), key=jax.random.fold_in(key, i),
                    epsilon=epsilon, norm=norm, **budget)
    mis, ok = confirm(model_fn, x, np.asarray(result.x_adv), y, epsilon=epsilon, norm=norm)
    broken = mis & ok
    robust[name] = float(np.mean(correct & ~broken))
    seconds[name] = time.time() - t0
  gaps = {name: robust[name] - robust["square"] for name in gradients}
  flags = []
  for name, gap in gaps.items():
    if gap > threshold:
      flags.append(f"{name}: gradient attack weaker than Square by {gap:.1%} points "
                   f"(> {threshold:.1%}): masked gradients")
  for message in flags:
    warnings.warn(message, GradientMaskingWarning, stacklevel=2)
  return MaskingReport(norm, epsilon, len(x), float(np.mean(correct)), robust, gaps,
                       float(threshold), tuple(flags), seconds)
