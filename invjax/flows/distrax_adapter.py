"""`to_distrax`: view a trained invjax flow as a `distrax.Bijector`.

Direction. distrax's `Transformed(base, bijector)` uses the bijector generatively,
`x = bijector.forward(z)` with `z ~ base`. So by default (`direction="generative"`)
the bijector's forward is the flow's `inverse` (latent -> data) and its inverse is
the flow's `__call__` (data -> latent); then `Transformed(Normal, to_distrax(model,
variables))` is the flow's density model: `log_prob(x) = base.log_prob(f(x)) +
log|det df/dx|`, and `sample` draws `f^-1(z)`. `direction="normalizing"` gives the
other orientation (forward = the flow's `__call__`, data -> latent).

Event shapes. The data event shape comes from `data_shape` or, by default, from
`model.image_shape` (Glow / RealNVP have it); the latent event shape is found by
tracing the flow once (`jax.eval_shape`). So `event_ndims_in` / `event_ndims_out`
are the ranks of those event shapes (3 for NHWC images, 1 for vectors and for the
flat latent of multi-scale models).

Batch dims. The bijector accepts inputs of shape `batch_shape + event_shape` with
any number (including zero) of leading batch dims: they are flattened into the
flow's single batch axis, the flow is applied, and the outputs are reshaped to
`batch_shape + out_event_shape` (log-dets to `batch_shape`). An unbatched event is
run as a batch of one. This is what distrax needs: `Transformed.sample` calls the
bijector under `jax.vmap` on single events, `log_prob` calls it on batches.

The returned bijector is a pytree (distrax bijectors are): the variables are its
leaves and the Flax module (hashable) is static, so it can be passed through
`jax.jit`.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from invjax._src import checks

DIRECTIONS = ("generative", "normalizing")


class FlowBijector(distrax.Bijector):
  """A distrax bijector over an invjax flow (see the module docstring).

  Build it with `to_distrax`. `forward` maps `in_shape` events to `out_shape` events.
  """

  def __init__(self, model: nn.Module, variables, data_shape: Tuple[int, ...],
               latent_shape: Tuple[int, ...], direction: str = "generative"):
    if direction not in DIRECTIONS:
      raise checks.InvjaxError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    generative = direction == "generative"
    in_shape, out_shape = (latent_shape, data_shape) if generative else (data_shape, latent_shape)
    super().__init__(event_ndims_in=len(in_shape), event_ndims_out=len(out_shape))
    self._model = model
    self._variables = variables
    self._direction = direction
    self._data_shape = tuple(data_shape)
    self._latent_shape = tuple(latent_shape)
    self._in_shape = tuple(in_shape)
    self._out_shape = tuple(out_shape)

  @property
  def direction(self) -> str:
    return self._direction

  @property
  def data_shape(self) -> Tuple[int, ...]:
    return self._data_shape

  @property
  def latent_shape(self) -> Tuple[int, ...]:
    return self._latent_shape

  def _run(self, v, method: Optional[str], in_shape, out_shape, name):
    v = jnp.asarray(v)
    n = len(in_shape)
    if v.ndim < n or tuple(v.shape[v.ndim - n:]) != in_shape:
      raise checks.InvjaxError(
          f"{name} must have shape batch_shape + {in_shape}, got {tuple(v.shape)}")
    batch_shape = tuple(v.shape[:v.ndim - n])
    flat = v.reshape((-1,) + in_shape)
    if method is None:
      out, log_det = self._model.apply(self._variables, flat)
    else:
      out, log_det = self._model.apply(self._variables, flat, method=method)
    return out.reshape(batch_shape + out_shape), log_det.reshape(batch_shape)

  def _flow(self, v, data_to_latent: bool, name):
    if data_to_latent:
      return self._run(v, None, self._data_shape, self._latent_shape, name)
    return self._run(v, "inverse", self._latent_shape, self._data_shape, name)

  def forward_and_log_det(self, x):
    """`y = f(x)` and `log|det df/dx|` (shape `batch_shape`)."""
    return self._flow(x, self._direction == "normalizing", "x")

  def inverse_and_log_det(self, y):
    """`x = f^-1(y)` and `log|det df^-1/dy|` (shape `batch_shape`)."""
    return self._flow(y, self._direction == "generative", "y")


def to_distrax(model: nn.Module, variables, *, direction: str = "generative",
               data_shape: Optional[Sequence[int]] = None,
               dtype=jnp.float32) -> FlowBijector:
  """Wraps `model.apply(variables, ...)` as a `distrax.Bijector`.

  Args:
    model: an invjax flow (`__call__(x) -> (z, log_det)`, `inverse(z) -> (x, log_det_inv)`).
    variables: its variables (the output of `model.init`, possibly trained).
    direction: "generative" (default: forward = `model.inverse`, latent -> data, so
      `distrax.Transformed(base, bijector)` is the flow's density) or "normalizing"
      (forward = `model.__call__`, data -> latent).
    data_shape: the data event shape (without batch), e.g. `(32, 32, 3)` or `(d,)`;
      defaults to `model.image_shape` when the model has one.
    dtype: dtype used to trace the latent shape.

  Returns:
    A `FlowBijector` (a pytree that can enter `jax.jit`).
  """
  if direction not in DIRECTIONS:
    raise checks.InvjaxError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
  if data_shape is None:
    data_shape = getattr(model, "image_shape", None)
    if data_shape is None:
      raise checks.InvjaxError(
          f"data_shape is required for a {type(model).__name__}, which has no image_shape "
          f"attribute (pass the event shape of one input, e.g. data_shape=(32, 32, 3))")
  data_shape = tuple(int(d) for d in data_shape)
  if not data_shape or any(d <= 0 for d in data_shape):
    raise checks.InvjaxError(f"data_shape must be a non-empty shape of positive sizes, "
                             f"got {data_shape}")
  probe = jax.ShapeDtypeStruct((1,) + data_shape, dtype)
  out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, probe)
  latent_shape = tuple(out[0].shape[1:])
  return FlowBijector(model, variables, data_shape, latent_shape, direction)
