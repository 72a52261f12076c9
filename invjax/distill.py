"""Knowledge distillation of a (non-invertible) teacher into an invertible student.

Hinton et al. (2015): the student matches the teacher's softened class
probabilities. Per example, with temperature T,

  kd(s, t) = T^2 * KL( softmax(t / T) || softmax(s / T) )

(the T^2 keeps the gradient's scale roughly independent of T: d kd / d s =
T * (softmax(s/T) - softmax(t/T))), optionally mixed with the hard-label
cross-entropy: loss = (1 - alpha) * kd + alpha * CE(s, y).

The student is any Flax module whose output is the logits or a tuple starting
with them (`invjax.flows.classifier.InvertibleClassifier` returns
`(logits, z, log_det)`); the teacher is any pure function
`x in [0,1] NHWC -> logits` (e.g. `invjax.nets.cnn.logits_fn(model, variables)`).
Training runs through `invjax.train` (jitted step; with a `workdir`, the
checkpointed, resumable `train_loop`).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from invjax import checks
from invjax import data as data_lib
from invjax import train

LogitsFn = Callable[[jax.Array], jax.Array]


def kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, *,
            temperature: float = 4.0) -> jax.Array:
  """Per-example `T^2 * KL(softmax(t/T) || softmax(s/T))`, float [batch].

  Args:
    student_logits: [batch, classes].
    teacher_logits: [batch, classes] (treated as constants: no gradient flows
      into the teacher).
    temperature: T > 0.
  """
  checks.check_positive(temperature, "temperature")
  if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
    raise checks.InvjaxError(
        f"student and teacher logits must both be [batch, classes], got "
        f"{student_logits.shape} and {teacher_logits.shape}")
  t = jax.lax.stop_gradient(teacher_logits)
  log_p_t = jax.nn.log_softmax(t / temperature, axis=-1)
  log_p_s = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
  return temperature ** 2 * kl


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array,
                      labels: Optional[jax.Array] = None, *, temperature: float = 4.0,
                      alpha: float = 0.0) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """Batch mean of `(1 - alpha) * kd + alpha * CE(student, labels)`.

  Args:
    student_logits, teacher_logits: [batch, classes].
    labels: int [batch] hard labels; required when `alpha > 0`.
    temperature: T > 0 of the KD term.
    alpha: weight in [0, 1] of the hard-label cross-entropy.

  Returns:
    (scalar loss, metrics {"kd", "ce" (if labels), "agreement", "accuracy" (if labels)}).
  """
  if not 0.0 <= float(alpha) <= 1.0:
    raise checks.InvjaxError(f"alpha must lie in [0, 1], got {alpha}")
  if alpha > 0 and labels is None:
    raise checks.InvjaxError("alpha > 0 (hard-label term) needs labels")
  kd = jnp.mean(kd_loss(student_logits, teacher_logits, temperature=temperature))
  pred = jnp.argmax(student_logits, -1)
  metrics = {"kd": kd,
             "agreement": jnp.mean(pred == jnp.argmax(teacher_logits, -1))}
  loss = (1.0 - alpha) * kd
  if labels is not None:
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(student_logits, labels))
    metrics.update(ce=ce, accuracy=jnp.mean(pred == labels))
    if alpha > 0:
      loss = loss + alpha * ce
  return loss, metrics


def agreement(teacher_fn: LogitsFn, student_fn: LogitsFn, x, *,
              batch_size: Optional[int] = None) -> float:
  """Fraction of inputs on which teacher and student have the same argmax.

  Args:
    teacher_fn, student_fn: `x [batch, ...] -> logits [batch, classes]`.
    x: float inputs [n, ...] (NHWC images in [0, 1] for image models).
    batch_size: evaluate in chunks of this size (None: all at once).
  """
  n = np.shape(x)[0]
  if n == 0:
    raise checks.InvjaxError("agreement: x is empty")
  bs = n if batch_size is None else int(batch_size)
  same = 0
  for start in range(0, n, bs):
    chunk = jnp.asarray(x[start:start + bs])
    same += int(jnp.sum(jnp.argmax(teacher_fn(chunk), -1) == jnp.argmax(student_fn(chunk), -1)))
  return same / n


def _first(out):
  return out[0] if isinstance(out, (tuple, list)) else out


def student_logits_fn(student: nn.Module, variables: Mapping[str, Any], *,
                      input_offset: float = 0.0) -> LogitsFn:
  """Pure `x in [0,1] -> logits` of a student that sees `x - input_offset`.

  Uses a fixed rng for modules that need one ("logdet" estimators); mutable
  collections are not updated (eval mode).
  """
  def fn(x):
    out = student.apply(variables, x - input_offset, rngs={"logdet": jax.random.PRNGKey(0)})
    return _first(out)
  return fn


def make_loss_fn(student: nn.Module, teacher_fn: LogitsFn, *, temperature: float = 4.0,
                 alpha: float = 0.0, input_offset: float = 0.0,
                 mutable: Sequence[str] | bool = True,
                 augment_fn: Optional[Callable[[jax.Array, jax.Array], jax.Array]] = None):
  """A `loss_fn(params, model_state, batch, rng) -> (loss, (new_model_state, metrics))`.

  The batch is `{"x": uint8 [B, H, W, C], "y": int32 [B]}` (as `invjax.train`
  feeds it); the teacher and the student see the same (optionally augmented)
  float images, the student shifted by `input_offset`.
  """
  checks.check_positive(temperature, "temperature")

  def loss_fn(params, model_state, batch, rng):
    aug_rng, fwd_rng = jax.random.split(rng)
    x = data_lib.to_float(batch["x"])
    if augment_fn is not None:
      x = augment_fn(aug_rng, x)
    teacher_logits = jax.lax.stop_gradient(teacher_fn(x))
    variables = {"params": params, **model_state}
    if mutable:
      out, new_state = student.apply(variables, x - input_offset, rngs={"logdet": fwd_rng},
                                     mutable=mutable)
    else:
      out, new_state = student.apply(variables, x - input_offset, rngs={"logdet": fwd_rng}), {}
    loss, metrics = distillation_loss(_first(out), teacher_logits, batch["y"],
                                      temperature=temperature, alpha=alpha)
    return loss, (new_state, metrics)

  return loss_fn


def distill(student: nn.Module, variables: Mapping[str, Any], teacher_fn: LogitsFn,
            dataset: data_lib.Dataset, *, key: jax.Array, num_steps: int, batch_size: int,
            optimizer: Optional[optax.GradientTransformation] = None,
            learning_rate: float = 1e-3, temperature: float = 4.0, alpha: float = 0.0,
            input_offset: float = 0.0, augment_fn=None, workdir: Optional[str] = None,
            config: Optional[Mapping[str, Any]] = None, progress: bool = False, mesh=None
            ) -> Tuple[Dict[str, Any], list]:
  """Trains `student` (initial `variables`) to match `teacher_fn` on `dataset`.

  Args:
    student: Flax module, output logits or `(logits, ...)`.
    variables: its initial variables (`{"params": ..., other collections}`).
    teacher_fn: `x [B, H, W, C] in [0,1] -> logits`.
    dataset: uint8 training images (labels used only when `alpha > 0` and for metrics).
    key: PRNG key (per-step rng and data order).
    num_steps, batch_size: training length.
    optimizer: optax optimizer (default Adam(learning_rate)).
    temperature, alpha: see `distillation_loss`.
    input_offset: the student sees `x - input_offset`.
    augment_fn: optional `augment_fn(key, x_float) -> x_float`.
    workdir: with a directory, run `invjax.train.train_loop` there (metrics.jsonl,
      orbax checkpoints, resume); without, a plain in-memory loop.
    config: extra train_loop settings (log_every, checkpoint_every, ...).
    progress: tqdm bar.
    mesh: optional data-parallel mesh (`invjax.parallel`), with a `workdir` only.

  Returns:
    (trained variables, list of per-step metric dicts (in-memory loop) or the
    final train_loop eval metrics as a one-element list).
  """
  if not isinstance(num_steps, (int, np.integer)) or num_steps < 0:
    raise checks.InvjaxError(f"num_steps must be an int >= 0, got {num_steps!r}")
  optimizer = optimizer or optax.adam(learning_rate)
  params, model_state = train.split_variables(variables)
  loss_fn = make_loss_fn(student, teacher_fn, temperature=temperature, alpha=alpha,
                         input_offset=input_offset, mutable=list(model_state) or False,
                         augment_fn=augment_fn)
  state_key, data_key = jax.random.split(key)
  state = train.TrainState.create(params, optimizer, state_key, model_state)
  step_fn = train.make_train_step(loss_fn, optimizer, mutable=True)
  if mesh is not None and workdir is None:
    raise checks.InvjaxError("distill: a data-parallel mesh needs a workdir (train_loop)")
  if workdir is not None:
    cfg = {"num_steps": num_steps, "batch_size": batch_size, **dict(config or {})}
    state, _ = train.train_loop(cfg, state, step_fn, dataset, workdir, data_key=data_key,
                                progress=progress, mesh=mesh)
    return state.variables, train.read_metrics(workdir)
  history = []
  batches = train.batch_iterator(data_key, dataset, batch_size)
  for _ in range(num_steps):
    state, metrics = step_fn(state, next(batches))
    history.append(metrics)
  history = [{k: float(v) for k, v in m.items()} for m in jax.device_get(history)]
  return state.variables, history
