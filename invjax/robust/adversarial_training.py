"""Adversarial examples for adversarial training, generated inside the jitted training step.

Every generator is a pure function `generate(variables, x, y, key) -> x_adv` of the model's
current variables, a batch of images x in [0, 1] (float [B, H, W, C]), labels y and a PRNG
key; `x_adv` lies in the L_inf ball of radius `epsilon` around x and in [0, 1], and carries
no gradient (`jax.lax.stop_gradient`: the training loss differentiates the model at x_adv,
never through the example's construction, as in Madry et al. 2018).

* `pgd_examples`: L_inf PGD with a uniform random start and `num_steps` signed-gradient
  steps of the cross-entropy (Madry et al. 2018), every step projected; no early stop, so
  each call costs exactly `num_steps` forward-backward passes (+ none for the start).
  Written here rather than calling `invjax.attacks.pgd` because that one takes the model as
  a static closure, validates eagerly and stops early; inside a training step the model's
  variables are traced arguments and the cost must be fixed.
* `latent_examples`: invjax's latent attack (`invjax.attacks.latent_steps.attack_core`, the
  compiled core of `invjax.attacks.latent_attack`) on the current model: `method="jacobian"`
  with `decode_step="linear"` (the minimal L_inf image step across the linear head seen
  through the encoder's Jacobian, decoded to first order: one linearised encoder pass, one
  vector-Jacobian product per candidate class, one re-check) or `method="closed_form"` (the
  minimal latent step decoded exactly: one encode, one decode, one re-check), no line
  search. The minimal step ends just past the decision boundary; with `fill=True` (default)
  the perturbation is then stretched to the full budget, `x + epsilon * d / max|d|`, so that
  training sees examples of the same L_inf size as PGD's. For the single-candidate Jacobian
  step this is the sign of the transposed Jacobian applied to the logit difference of the
  runner-up class: a margin FGSM computed through the flow.

`make_generator(kind, model, ...)` builds either from an `InvertibleClassifier`
(`invjax.flows.classifier`) whose inputs are shifted by `input_offset`;
`invjax.train.recipes.train_classifier(adversarial=...)` uses it.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from invjax._src import checks
from invjax._src import loops
from invjax._src.geometry import project
from invjax.attacks import latent_steps

Array = jax.Array
Generator = Callable[[Any, Array, Array, Array], Array]

KINDS = ("pgd", "latent")
LATENT_METHODS = ("jacobian", "closed_form")


def _check_budget(epsilon: float, num_steps: int) -> None:
  if not (isinstance(epsilon, (int, float)) and epsilon > 0):
    raise checks.InvjaxError(f"epsilon must be a number > 0, got {epsilon!r}")
  if not (isinstance(num_steps, int) and num_steps >= 1):
    raise checks.InvjaxError(f"num_steps must be an int >= 1, got {num_steps!r}")


def pgd_examples(logits_fn: Callable[[Any, Array], Array], variables: Any, x: Array,
                 y: Array, key: Array, *, epsilon: float, num_steps: int = 7,
                 step_size: Optional[float] = None, random_start: bool = True,
                 unroll: Optional[bool] = None) -> Array:
  """L_inf PGD examples (Madry et al. 2018) on the current model, without gradient.

  Args:
    logits_fn: `(variables, x) -> logits [B, K]` for images x in [0, 1].
    variables: the model's current variables (traced inside a training step).
    x: float [B, ...] images in [0, 1].
    y: int [B] labels.
    key: PRNG key of the random start.
    epsilon: L_inf radius.
    num_steps: gradient steps (each one forward-backward pass).
    step_size: default `2.5 * epsilon / num_steps` (Madry et al.'s rule).
    random_start: start from a uniform point of the ball (clipped to [0, 1]).
    unroll: straight-line steps instead of a `fori_loop` (None: `invjax._src.loops`' rule).

  Returns:
    float [B, ...] x_adv in the epsilon ball around x and in [0, 1] (stop_gradient).
  """
  _check_budget(epsilon, num_steps)
  checks.check_images(x, "x", rank=(2, 3, 4))
  alpha = 2.5 * epsilon / num_steps if step_size is None else float(step_size)
  x = jax.lax.stop_gradient(x)
  variables = jax.lax.stop_gradient(variables)

  def loss(xx):
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits_fn(variables, xx), y))

  x0 = x
  if random_start:
    x0 = project(x + jax.random.uniform(key, x.shape, x.dtype, -epsilon, epsilon), x,
                 epsilon, "linf")

  def body(_, xx):
    return project(xx + alpha * jnp.sign(jax.grad(loss)(xx)), x, epsilon, "linf")

  x_adv = loops.fori(num_steps, body, x0, unroll=loops.resolve_unroll(unroll, num_steps))
  return jax.lax.stop_gradient(x_adv)


def latent_examples(encode: Callable[[Any, Array], Array],
                    decode: Callable[[Any, Array], Array],
                    linear_head: Callable[[Any], Any], variables: Any, x: Array, y: Array,
                    key: Optional[Array] = None, *, epsilon: float, method: str = "jacobian",
                    num_iters: int = 1, num_candidates: Optional[int] = 1,
                    overshoot: float = 0.02, fill: bool = True,
                    unroll: Optional[bool] = None) -> Array:
  """Latent-attack examples (module docstring) on the current model, without gradient.

  Args:
    encode: `(variables, x) -> z [B, D]` for images x in [0, 1]; a fixed function (it is a
      static argument of the compiled attack core).
    decode: `(variables, z) -> x`, its inverse (used by `method="closed_form"` only).
    linear_head: `variables -> (A [D, K], b [K])` with `logits = z @ A + b`.
    variables: the model's current variables.
    x: float [B, ...] images in [0, 1].
    y: int [B] labels.
    key: unused (the step is deterministic); accepted for the common signature.
    epsilon: L_inf radius.
    method: "jacobian" (linear decode) or "closed_form" (exact decode).
    num_iters: re-linearisations (DeepFool-style; 1: a single step).
    num_candidates: the runner-up classes the Jacobian step considers (None: all K - 1; each
      costs one vector-Jacobian product).
    overshoot: the minimal step times (1 + overshoot).
    fill: stretch the perturbation to L_inf norm epsilon (else: the minimal step, projected).
    unroll: as in `invjax.attacks.latent_attack`.

  Returns:
    float [B, ...] x_adv in the epsilon ball around x and in [0, 1] (stop_gradient).
  """
  del key
  _check_budget(epsilon, num_iters)
  checks.check_images(x, "x", rank=(2, 3, 4))
  if method not in LATENT_METHODS:
    raise checks.InvjaxError(f"method must be one of {LATENT_METHODS}, got {method!r}")
  x = jax.lax.stop_gradient(x)
  variables = jax.lax.stop_gradient(variables)
  a, b = linear_head(variables)
  k = int(a.shape[1])
  if num_candidates is not None and not 1 <= num_candidates <= k - 1:
    raise checks.InvjaxError(f"num_candidates must lie in [1, {k - 1}], got {num_candidates}")
  if num_candidates == k - 1:
    num_candidates = None
  dtype = x.dtype
  out = latent_steps.attack_core(
      variables, (a, b), x, y, None, jnp.asarray(0.0, dtype), jnp.asarray(epsilon, dtype),
      jnp.asarray(overshoot, dtype), jnp.asarray(0.0, dtype), None,
      encode=encode, decode=decode, head_fn=None, method=method, norm="linf",
      num_iters=int(num_iters), num_steps=0, clip=True, qp_sweeps=50,
      num_candidates=num_candidates if method == "jacobian" else None,
      unroll=loops.resolve_unroll(unroll, num_iters), unroll_opt=False,
      linear_decode=method == "jacobian")
  x_adv = out.x_adv
  if fill:
    d = x_adv - x
    size = jnp.max(jnp.abs(d.reshape(d.shape[0], -1)), axis=1)
    scale = jnp.where(size > 0, epsilon / jnp.maximum(size, 1e-12), 0.0)
    x_adv = x + d * scale.reshape((-1,) + (1,) * (x.ndim - 1))
  return jax.lax.stop_gradient(project(x_adv, x, epsilon, "linf"))


def adversarial_batch(generate: Generator, variables: Any, x: Array, y: Array, key: Array, *,
                      fraction: float = 0.5) -> Array:
  """x with its first `round(fraction * B)` examples replaced by `generate`'s (no gradient).

  Training on this batch is the mixed loss `(1 - f) * CE(clean) + f * CE(adversarial)` of
  Goodfellow et al. (2015) on disjoint parts of the batch (f = 1: Madry et al.'s
  adversarial-only loss); only the replaced examples are attacked.
  """
  if not 0.0 < fraction <= 1.0:
    raise checks.InvjaxError(f"adversarial fraction must lie in (0, 1], got {fraction}")
  n = max(1, int(round(fraction * x.shape[0])))
  x_adv = jax.lax.stop_gradient(generate(variables, x[:n], y[:n], key))
  return jnp.concatenate([x_adv, x[n:]], axis=0) if n < x.shape[0] else x_adv


def model_functions(model: Any, *, input_offset: float = -0.5):
  """(logits_fn, encode, decode, linear_head) of an `InvertibleClassifier` seeing
  `x + input_offset`, as functions of (variables, images in [0, 1]); built once per model so
  that the compiled attack core keeps the same static functions."""
  offset = float(input_offset)
  logits_fn = lambda v, xx: model.apply(v, xx + offset)[0]
  encode = lambda v, xx: model.apply(v, xx + offset, method="encode")
  decode = lambda v, z: model.apply(v, z, method="decode") - offset
  linear_head = lambda v: model.apply(v, method="linear_head")
  return logits_fn, encode, decode, linear_head


def make_generator(kind: str, model: Any, *, epsilon: float, num_steps: int,
                   input_offset: float = -0.5, latent_method: str = "jacobian",
                   **kwargs: Any) -> Generator:
  """`generate(variables, x, y, key) -> x_adv` of `kind` ("pgd" or "latent") for `model`.

  `num_steps`: PGD steps, or the latent attack's re-linearisations; `kwargs` go to
  `pgd_examples` / `latent_examples`.
  """
  if kind not in KINDS:
    raise checks.InvjaxError(f"adversarial kind must be one of {KINDS}, got {kind!r}")
  _check_budget(epsilon, num_steps)
  logits_fn, encode, decode, linear_head = model_functions(model, input_offset=input_offset)
  if kind == "pgd":
    return lambda v, x, y, key: pgd_examples(logits_fn, v, x, y, key, epsilon=epsilon,
                                             num_steps=num_steps, **kwargs)
  if latent_method not in LATENT_METHODS:
    raise checks.InvjaxError(
        f"latent_method must be one of {LATENT_METHODS}, got {latent_method!r}")
  return lambda v, x, y, key: latent_examples(
      encode, decode, linear_head, v, x, y, key, epsilon=epsilon, method=latent_method,
      num_iters=num_steps, **kwargs)


__all__ = ["Generator", "KINDS", "LATENT_METHODS", "adversarial_batch", "latent_examples",
           "make_generator", "model_functions", "pgd_examples"]
