"""Input checks of the pixel-space attacks (`gradient`, `cw`): any `logits_fn`.

Validation happens eagerly, before the attack's compiled loop: negative/NaN epsilon,
labels of the wrong shape or dtype, non-float or NaN or out-of-range inputs, and a
`logits_fn` that returns NaN (or the wrong shape) on the clean input all raise
`invjax.InvjaxError` with a message that names the problem. Inside `jax.jit` only the
static (shape/dtype) checks apply.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from invjax._src import checks
from invjax._src import compilation

LogitsFn = Callable[[jax.Array], jax.Array]


def validate(logits_fn: LogitsFn, x, y, *, epsilon=None, step_size=None,
             choices: Sequence[Tuple[str, Optional[str], Sequence[str]]] = ()) -> None:
  """Checks the inputs of an attack; raises `InvjaxError` naming the problem.

  Args:
    logits_fn: the model, `[batch, ...] -> [batch, classes]`.
    x: float [batch, ...] inputs in [0, 1].
    y: int [batch] labels (or targets).
    epsilon, step_size: None, or a scalar / [batch] value that must be finite and > 0.
    choices: `(name, value, allowed)` triples, checked in order (a None value is skipped),
      e.g. `("norm", norm, NORMS)`.
  """
  if not callable(logits_fn):
    raise checks.InvjaxError(f"logits_fn must be callable, got {type(logits_fn).__name__}")
  if np.ndim(x) < 2:
    raise checks.InvjaxError(
        f"x must be batch-first with rank >= 2 ([batch, d] or NHWC), got shape {np.shape(x)}")
  checks.check_images(x, "x", rank=np.ndim(x))
  batch = np.shape(x)[0]
  checks.check_labels(y, batch, "y")
  for name, value, allowed in choices:
    if value is not None and value not in allowed:
      raise checks.InvjaxError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
  for value, name in ((epsilon, "epsilon"), (step_size, "step_size")):
    if value is None:
      continue
    if np.ndim(value) not in (0, 1) or (np.ndim(value) == 1 and np.shape(value)[0] != batch):
      raise checks.InvjaxError(
          f"{name} must be a scalar or have shape ({batch},), got shape {np.shape(value)}")
    if checks.is_concrete(value):
      arr = np.asarray(value, np.float64)
      if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise checks.InvjaxError(f"{name} must be > 0, got {arr if arr.ndim else float(arr)}")
  check_model(logits_fn, x, y)


def check_model(logits_fn: LogitsFn, x, y) -> None:
  """Checks `logits_fn`'s output shape on x and runs it once on the clean input (eagerly,
  when `x` is concrete): labels must index its logits, and the logits must be finite."""
  out = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)))
  if (not isinstance(out, jax.ShapeDtypeStruct) or len(out.shape) != 2
      or out.shape[0] != np.shape(x)[0]):
    got = getattr(out, "shape", type(out).__name__)
    raise checks.InvjaxError(
        f"logits_fn must map x of shape {np.shape(x)} to logits [batch, classes], got {got}")
  num_classes = out.shape[1]
  if num_classes < 2:
    raise checks.InvjaxError(f"logits_fn must return at least 2 classes, got {num_classes}")
  if checks.is_concrete(y):
    arr = np.asarray(y)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
      raise checks.InvjaxError(
          f"y must lie in [0, {num_classes}) (the number of logits), got values in "
          f"[{arr.min()}, {arr.max()}]")
  if checks.is_concrete(x):
    logits = np.asarray(compilation.jit(logits_fn)(jnp.asarray(x)))
    bad = ~np.all(np.isfinite(logits), axis=1)
    if bad.any():
      raise checks.InvjaxError(
          f"logits_fn returned NaN or infinite logits on the clean input for {int(bad.sum())} "
          f"example(s) (first: index {int(np.argmax(bad))}); fix the model before attacking it")


def check_positive_int(value, name: str) -> None:
  """A Python / numpy int >= 1 (a static loop length)."""
  if not isinstance(value, (int, np.integer)) or value < 1:
    raise checks.InvjaxError(f"{name} must be a positive int, got {value!r}")
