"""Latent-inversion attacks on invertible classifiers.

An invertible classifier is `z = encode(x)` (a bijection), `logits = head(z)`
and `x = decode(z)`. Instead of optimising a perturbation in image space, the
attacker moves the latent code across the decision boundary and decodes it:

  * `method="closed_form"`: the minimal-norm latent step. For a linear head
    `logits = z @ A + b`, "class t beats class y by kappa" is the half-space
    `(A[:, t] - A[:, y]) . z' >= b_y - b_t + kappa`; its minimal-norm point is a
    projection. Untargeted: the cheapest half-space over t != y (exact: the
    feasible set is their union). Targeted: the intersection of the K - 1
    half-spaces `logit_t - logit_j >= kappa`, a K-dimensional dual QP solved by
    coordinate descent. Costs one encode and one decode.
  * `method="jacobian"`: the step with the smallest IMAGE-space cost, to first
    order. With `J = d encode / dx` at the current point, the head constraint
    `a . (J dx) >= m` has the minimal-L2 solution `dx = m J^T a / ||J^T a||^2`
    (the dual step `dx = J^T lambda`; several constraints: the same dual QP on
    the Gram matrix of the rows `J^T a_j`). Rows are vector-Jacobian products
    (K per iteration), the latent target `z + J dx` one Jacobian-vector product:
    the dense Jacobian is never formed. The latent target satisfies the head
    constraint exactly (the head is linear in z), so the decoded image is
    adversarial up to the decoder's accuracy; the step is re-linearised at the
    decoded point `num_iters` times (DeepFool-style), keeping the closest
    successful iterate. `decode_step="linear"` replaces the decode of the target by
    its first-order image `x + dx` (`J_decode = J^-1`): DeepFool on encode + head, no
    decoder pass; on ill-conditioned flows the exact decode of a boundary-crossing
    latent target can land far from x, its first-order image cannot. With
    `clip=True`, row components that would push a saturated pixel (0 or 1) outwards
    are dropped (exact for one constraint).
  * `method="optimize"`: starts from the Jacobian-aware point and runs projected
    Adam in latent space on `||decode(z') - x||^2`, projecting z' back onto the
    (latent, linear) adversarial set after every step, so every iterate stays
    adversarial while its image distance shrinks.

After the step, every iterate is projected onto the optional `epsilon` ball
(L2 or L_inf around x) and onto [0, 1] (`clip=True`), and success is always
re-checked by re-encoding the final image and applying the head. Clipping and the
epsilon projection remove part of a step's effect, often leaving the decoded
image a hair short of the boundary; a line search over `step_scales` (the latent
displacement `z' - z` of the last step times 1.1, 1.25, 1.5, 2 by default; one
decode and one encode per scale, each re-checked on the model, stopping once
every example succeeds) keeps the closest image that is adversarial after
clipping.

Cost counters (per batch call, as in `AttackResult`): `num_forward_evals`
counts encoder passes, `num_inverse_evals` decoder passes and `num_grad_evals`
Jacobian-vector / vector-Jacobian products (of the encoder, decoder, or of a
non-linear head when the head is a callable).

The bound `||x' - x||_2 <= Lip(decode) * ||z' - z||_2` is reported next to the
measured distance when `inverse_lipschitz` is given (`return_info=True`).

This module holds the API (checks, costs, results); the compiled steps are in
`invjax.attacks.latent_steps`, the constraints and minimal-norm steps in
`invjax.attacks.latent_geometry`.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from invjax._src import checks
from invjax._src import loops
from invjax._src.geometry import NORMS, flat_norm
from invjax.attacks import functional
from invjax.attacks import latent_steps
from invjax.attacks import result as result_lib

Array = jax.Array
LinearHead = Tuple[Array, Array]
Head = Union[LinearHead, Callable[[Array], Array]]

METHODS = ("closed_form", "jacobian", "optimize")
DECODE_STEPS = ("exact", "linear")
# Line search of the closed form (multiples of the minimal latent step).
DEFAULT_STEP_SCALES = (1.1, 1.25, 1.5, 2.0)


class LatentInfo(NamedTuple):
  """Latent-space side of a latent attack (all batch-first).

  Attributes:
    z: [batch, D] latent code of the clean input.
    z_adv: [batch, D] latent code of the returned `x_adv` (re-encoded).
    latent_l2: [batch] `||z_adv - z||_2`.
    latent_linf: [batch] `max |z_adv - z|`.
    image_l2_bound: [batch] `inverse_lipschitz * latent_l2`, an upper bound of the
      measured image distance `result.l2`; None when no `inverse_lipschitz` was given.
  """
  z: Array
  z_adv: Array
  latent_l2: Array
  latent_linf: Array
  image_l2_bound: Optional[Array]


def _validate(x, y, target, kappa, epsilon, method, norm, num_classes, num_iters, num_steps):
  checks.check_images(x, "x", rank=(2, 3, 4))
  checks.check_labels(y, x.shape[0], "y", num_classes)
  if target is not None:
    checks.check_labels(target, x.shape[0], "target", num_classes)
    if checks.is_concrete(target) and checks.is_concrete(y) and np.any(
        np.asarray(target) == np.asarray(y)):
      raise checks.InvjaxError("target must differ from the true label y for every example")
  if method not in METHODS:
    raise checks.InvjaxError(f"method must be one of {METHODS}, got {method!r}")
  if norm not in NORMS:
    raise checks.InvjaxError(f"norm must be one of {NORMS}, got {norm!r}")
  checks.check_positive(kappa, "kappa", strict=False)
  if epsilon is not None:
    checks.check_positive(epsilon, "epsilon")
  if num_iters < 1:
    raise checks.InvjaxError(f"num_iters must be >= 1, got {num_iters}")
  if num_steps < 0:
    raise checks.InvjaxError(f"num_steps must be >= 0, got {num_steps}")


def _check_decode_step(decode_step: str, method: str) -> bool:
  """Whether the step is decoded to first order (decode_step="linear")."""
  if decode_step not in DECODE_STEPS:
    raise checks.InvjaxError(f"decode_step must be one of {DECODE_STEPS}, got {decode_step!r}")
  if decode_step == "linear" and method == "closed_form":
    raise checks.InvjaxError(
        "decode_step='linear' needs the Jacobian of the encoder: use method='jacobian' or "
        "'optimize' (the closed-form step is taken in latent space only)")
  return decode_step == "linear"


def _check_step_scales(step_scales) -> Optional[np.ndarray]:
  """float64 [S] scales, or None for no line search (None or empty)."""
  if step_scales is None or len(step_scales) == 0:
    return None
  step_scales = np.asarray(step_scales, np.float64)
  if step_scales.ndim != 1 or not np.all(np.isfinite(step_scales)) or np.any(step_scales <= 0):
    raise checks.InvjaxError(
        f"step_scales must be a sequence of finite positive numbers, got {step_scales}")
  return step_scales


def _check_candidates(num_candidates, num_classes: int) -> Optional[int]:
  """The candidate count, or None for all K - 1 other classes."""
  if num_candidates is None:
    return None
  if not 1 <= int(num_candidates) <= num_classes - 1:
    raise checks.InvjaxError(
        f"num_candidates must lie in [1, {num_classes - 1}], got {num_candidates}")
  num_candidates = int(num_candidates)
  return None if num_candidates == num_classes - 1 else num_candidates


def _costs(n_s, *, method, num_iters, num_steps, num_classes, num_candidates, targeted,
           head_is_linear, linear_decode):
  """(encoder passes, decoder passes, JVPs / VJPs) of one call; n_s is the number of
  line-search scales tried (one decode + one encode each)."""
  num_heads = 0 if head_is_linear else 1
  k = num_classes
  if method == "closed_form":
    return 1 + num_iters + n_s, num_iters + n_s, num_heads * (num_iters + n_s) * k
  rows = k if (num_candidates is None or targeted) else num_candidates
  fwd, inv = num_iters + 1 + n_s, num_iters + n_s
  grad = num_iters * (rows + 1 + num_heads * k) + n_s * num_heads * k
  if linear_decode:  # no decoder pass and no Jacobian-vector product per step
    inv, grad = 0 * n_s, grad - num_iters
  if method == "optimize":
    fwd, inv, grad = fwd + 1, inv + num_steps, grad + num_steps * (1 + num_heads * k)
  return fwd, inv, grad


def _run(params, encode, decode, head_params, head_fn, x, y, *, target, kappa, method,
         epsilon, norm, num_iters, num_steps, learning_rate, overshoot, clip, qp_sweeps,
         inverse_lipschitz, return_info, num_classes, num_candidates, step_scales, unroll,
         decode_step):
  """Validation, the compiled core (`latent_steps.attack_core`), the result and its costs."""
  linear_decode = _check_decode_step(decode_step, method)
  if num_iters is None:
    num_iters = 1 if method == "closed_form" else 3
  step_scales = _check_step_scales(step_scales)
  _validate(x, y, target, kappa, epsilon, method, norm, num_classes, num_iters, num_steps)
  checks.check_positive(overshoot, "overshoot", strict=False)
  num_candidates = _check_candidates(num_candidates, num_classes)
  if inverse_lipschitz is not None:
    checks.check_positive(inverse_lipschitz, "inverse_lipschitz")
  x = jnp.asarray(x)
  y = jnp.asarray(y)
  target = None if target is None else jnp.asarray(target)
  functional.check_codec(params, encode, decode, x)
  out = latent_steps.attack_core(
      params, head_params, x, y, target, jnp.asarray(kappa, x.dtype),
      None if epsilon is None else jnp.asarray(epsilon, x.dtype),
      jnp.asarray(overshoot, x.dtype), jnp.asarray(learning_rate, x.dtype),
      None if step_scales is None else jnp.asarray(step_scales, x.dtype),
      encode=encode, decode=decode, head_fn=head_fn, method=method, norm=norm,
      num_iters=int(num_iters), num_steps=int(num_steps) if method == "optimize" else 0,
      clip=bool(clip), qp_sweeps=int(qp_sweeps),
      unroll=loops.resolve_unroll(unroll, num_iters),
      unroll_opt=loops.resolve_unroll(unroll, num_steps) if method == "optimize" else False,
      num_candidates=num_candidates if method != "closed_form" else None,
      linear_decode=linear_decode)
  fwd, inv, grad = _costs(
      out.num_scales_tried, method=method, num_iters=num_iters, num_steps=num_steps,
      num_classes=num_classes, num_candidates=num_candidates, targeted=target is not None,
      head_is_linear=head_fn is None, linear_decode=linear_decode)
  linf, l2 = result_lib.distances(x, out.x_adv)
  res = result_lib.AttackResult(
      x_adv=out.x_adv, success=out.success, linf=linf, l2=l2,
      num_grad_evals=jnp.asarray(grad, jnp.int32),
      num_forward_evals=jnp.asarray(fwd, jnp.int32),
      num_inverse_evals=jnp.asarray(inv, jnp.int32))
  if not return_info:
    return res
  dz = out.z_adv - out.z0
  latent_l2 = flat_norm(dz, "l2")
  bound = None if inverse_lipschitz is None else inverse_lipschitz * latent_l2
  return res, LatentInfo(out.z0, out.z_adv, latent_l2, flat_norm(dz, "linf"), bound)


def latent_attack(encode_fn: Callable[[Array], Array], decode_fn: Callable[[Array], Array],
                  head: Head, x: Array, y: Array, *, key: Optional[Array] = None,
                  target: Optional[Array] = None, kappa: float = 0.0,
                  method: str = "closed_form", epsilon: Optional[float] = None,
                  norm: str = "l2", num_iters: Optional[int] = None, num_steps: int = 20,
                  learning_rate: float = 1e-3, overshoot: float = 0.02, clip: bool = True,
                  qp_sweeps: int = 200, inverse_lipschitz: Optional[float] = None,
                  num_candidates: Optional[int] = None,
                  step_scales: Optional[Sequence[float]] = DEFAULT_STEP_SCALES,
                  unroll: Optional[bool] = None, return_info: bool = False,
                  decode_step: str = "exact"):
  """Latent-inversion attack on an invertible classifier given as pure functions.

  Args:
    encode_fn: `[batch, ...] -> [batch, D]`, the bijection x -> z.
    decode_fn: `[batch, D] -> [batch, ...]`, its inverse.
    head: `(A [D, K], b [K])` with `logits = z @ A + b`, or a callable
      `z [batch, D] -> logits [batch, K]` (linearised locally at every iteration).
    x: float [batch, ...] clean inputs in [0, 1].
    y: int [batch] true labels.
    key: unused (the attacks are deterministic); accepted for the common signature.
    target: int [batch] target classes (targeted attack), or None (untargeted).
    kappa: required logit margin (>= 0).
    method: "closed_form", "jacobian" or "optimize" (see module docstring).
    epsilon: optional radius of the `norm` ball the adversarial images are projected on.
    norm: "l2" or "linf": the epsilon ball, the image distance that ranks iterates, and
      (method="jacobian") the image-space norm of the minimal step. The closed-form
      latent step is always the minimal L2 (Euclidean projection) one.
    num_iters: re-linearisations (default 1 for closed_form, 3 otherwise).
    num_steps: projected-Adam steps (method="optimize").
    learning_rate: Adam learning rate in latent units (method="optimize").
    overshoot: the step is multiplied by (1 + overshoot) to land past the boundary.
    clip: project onto [0, 1].
    qp_sweeps: coordinate-descent sweeps of the targeted dual QP.
    inverse_lipschitz: a bound on Lip(decode); gives `LatentInfo.image_l2_bound`.
    num_candidates: untargeted Jacobian-aware steps only try the `num_candidates`
      classes with the highest logits (besides y), as DeepFool does: that many
      vector-Jacobian products per iteration instead of K (None: all classes).
    step_scales: the latent displacement of the last step is also tried scaled by
      each of these factors, in order, until every example succeeds (one decode +
      one encode each); the closest image that is adversarial after clipping /
      projection is kept. None or () turns the line search off.
    unroll: trace the iterations as straight-line code instead of `lax` loops (same
      result). None: on CPU, where XLA runs convolutions inside loops ~3x slower
      (`invjax._src.loops`).
    return_info: also return a `LatentInfo`.
    decode_step: "exact" decodes each latent target `z + J dx` with `decode`; "linear"
      (methods "jacobian" / "optimize") takes its first-order image `x + dx` instead
      (`J_decode = J^-1`), which is DeepFool on encode + head. On ill-conditioned flows
      the exact decode of a latent step that crosses the boundary can land far from x
      (docs/results/transfer.md); the first-order image cannot.

  Returns:
    `AttackResult` (success re-checked by re-encoding `x_adv`), or
    `(AttackResult, LatentInfo)` when `return_info`.
  """
  del key
  if isinstance(head, (tuple, list)):
    a, b = (jnp.asarray(h) for h in head)
    checks.check_rank(a, 2, "head A")
    checks.check_shape(b, (a.shape[1],), "head b")
    head_params, head_fn, num_classes = (a, b), None, int(a.shape[1])
  elif callable(head):
    head_params, head_fn = None, functional.drop_params(head)
    z_shape = jax.eval_shape(encode_fn, jnp.asarray(x) if hasattr(x, "shape") else x)
    num_classes = int(jax.eval_shape(head, z_shape).shape[-1])
  else:
    raise checks.InvjaxError(f"head must be (A, b) or a callable, got {type(head)}")
  return _run(None, functional.drop_params(encode_fn), functional.drop_params(decode_fn),
              head_params, head_fn, x, y, target=target, kappa=kappa, method=method,
              epsilon=epsilon, norm=norm, num_iters=num_iters, num_steps=num_steps, learning_rate=learning_rate,
              overshoot=overshoot, clip=clip, qp_sweeps=qp_sweeps,
              inverse_lipschitz=inverse_lipschitz, return_info=return_info,
              num_classes=num_classes, num_candidates=num_candidates, step_scales=step_scales,
              unroll=unroll, decode_step=decode_step)


def latent_attack_from_model(model: Any, variables: Any, x: Array, y: Array, *,
                             use_linear_head: bool = True, **kwargs):
  """`latent_attack` on an `InvertibleClassifier`-style Flax module.

  Uses `model.apply(variables, x, method="encode")`, `method="decode"` and either
  the exact linear head `method="linear_head"` (when the model has one and
  `use_linear_head`) or `method="logits"`. Compiled once per (model, method).

  Args:
    model: Flax module with `encode`, `decode`, `logits` (and optionally `linear_head`).
    variables: its variables.
    x, y: as in `latent_attack`.
    use_linear_head: use `linear_head()` for the exact closed form.
    **kwargs: forwarded to `latent_attack` (target, kappa, method, epsilon, norm, ...).

  Returns:
    As `latent_attack`.
  """
  kwargs.pop("key", None)
  if use_linear_head and hasattr(model, "linear_head"):
    a, b = model.apply(variables, method="linear_head")
    head_params, head_fn, num_classes = (a, b), None, int(a.shape[1])
  else:
    head_params, head_fn = variables, functional.model_method(model, "logits")
    z_shape = jax.eval_shape(lambda v: model.apply(variables, v, method="encode"),
                             jnp.asarray(x))
    num_classes = int(jax.eval_shape(
        lambda v: model.apply(variables, v, method="logits"), z_shape).shape[-1])
  defaults = _attack_defaults()
  unknown = set(kwargs) - set(defaults)
  if unknown:
    raise checks.InvjaxError(f"unknown arguments to latent_attack_from_model: {sorted(unknown)}")
  defaults.update(kwargs)
  return _run(variables, functional.model_method(model, "encode"),
              functional.model_method(model, "decode"), head_params, head_fn, x, y,
              num_classes=num_classes, **defaults)


def _attack_defaults() -> dict:
  """The keyword arguments of `latent_attack` (but `key`) and their defaults."""
  params = inspect.signature(latent_attack).parameters.values()
  return {p.name: p.default for p in params if p.kind == p.KEYWORD_ONLY and p.name != "key"}
