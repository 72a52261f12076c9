"""The train state and the jitted step functions every invjax training shares.

A loss function has the signature

  loss_fn(params, model_state, batch, rng) -> (loss, (new_model_state, metrics))

where `params` is the "params" collection, `model_state` a dict of the other
(mutable) Flax collections ("batch_stats", "spectral", ...; `{}` when none),
`batch` a dict `{"x": uint8 [B, H, W, C], "y": int32 [B]}` as produced by
`invjax.data.batches` (convert with `invjax.data.to_float` inside the loss, so
the uint8 batch is what travels to the device), `rng` a fresh PRNG key for this
step (dropout, dequantisation noise, log-det estimators), `loss` a scalar, and
`metrics` a dict of scalars that are logged (averaged over the logging window).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from invjax import data as data_lib
from invjax._src import compilation
from invjax._src.checks import InvjaxError

PyTree = Any
Batch = Dict[str, Any]
LossFn = Callable[..., Tuple[jax.Array, Tuple[PyTree, Dict[str, jax.Array]]]]


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training, as one pytree (checkpointed whole).

  step: int32 scalar, number of finished optimizer steps.
  params: the "params" collection.
  model_state: dict of the other Flax collections ("batch_stats", "spectral", ...).
  opt_state: the optax state.
  rng: raw uint32 PRNG key [2]; step `s` uses `jax.random.fold_in(rng, s)`.
  """
  step: jax.Array
  params: PyTree
  model_state: PyTree
  opt_state: PyTree
  rng: jax.Array

  @classmethod
  def create(cls, params: PyTree, optimizer: optax.GradientTransformation, rng: jax.Array,
             model_state: Optional[Mapping[str, PyTree]] = None) -> "TrainState":
    """A step-0 state; `rng` may be a raw uint32 key or a typed key."""
    rng = jnp.asarray(rng)
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
      rng = jax.random.key_data(rng)
    if rng.shape != (2,) or rng.dtype != jnp.uint32:
      raise InvjaxError(f"rng must be a PRNG key (uint32 [2]), got {rng.dtype} {rng.shape}")
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               model_state=dict(model_state or {}), opt_state=optimizer.init(params), rng=rng)

  @property
  def variables(self) -> Dict[str, PyTree]:
    """The Flax variables dict `{"params": ..., **model_state}` for `model.apply`."""
    return {"params": self.params, **self.model_state}


def split_variables(variables: Mapping[str, PyTree]) -> Tuple[PyTree, Dict[str, PyTree]]:
  """Splits Flax variables into (params, model_state = every other collection)."""
  if "params" not in variables:
    raise InvjaxError(f"variables have no 'params' collection (found {sorted(variables)})")
  params = variables["params"]
  return params, {k: v for k, v in variables.items() if k != "params"}


def _global_norm(tree: PyTree) -> jax.Array:
  """sqrt of the sum of squares of every leaf (optax renames its own between releases)."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def count_params(params: PyTree) -> int:
  """Number of scalar parameters in a pytree."""
  return sum(int(np.prod(np.shape(p))) for p in jax.tree.leaves(params))


def _merge_model_state(old: Mapping[str, PyTree], new: Optional[Mapping[str, PyTree]],
                       mutable: bool | Sequence[str]) -> Dict[str, PyTree]:
  out = dict(old)
  if not new or mutable is False:
    return out
  names = list(new) if mutable is True else [m for m in mutable if m in new]
  for name in names:
    out[name] = new[name]
  return out


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
                    mutable: bool | Sequence[str] = True, jit: bool = True,
                    donate: bool = False) -> Callable[[TrainState, Batch], Tuple[TrainState, Dict]]:
  """Returns `train_step(state, batch) -> (new_state, metrics)`.

  The step draws `rng = fold_in(state.rng, state.step)`, differentiates `loss_fn`
  (signature in the module docstring) with respect to `params`, applies
  `optimizer`, and replaces the `mutable` collections of `model_state` with the
  ones the loss returned (True: all returned; False: none; or a list of names).
  `metrics` holds the loss function's metrics plus "loss" and "grad_norm".
  With `jit` the step is compiled once per input shape; under a `jax.sharding`
  mesh (see `invjax.parallel`) the same function runs data-parallel.
  `donate` lets XLA reuse the old state's buffers (do not reuse the old state).
  """
  if not callable(loss_fn):
    raise InvjaxError(f"loss_fn must be callable, got {type(loss_fn).__name__}")

  def train_step(state: TrainState, batch: Batch):
    rng = jax.random.fold_in(state.rng, state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (new_model_state, metrics)), grads = grad_fn(
        state.params, state.model_state, batch, rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    model_state = _merge_model_state(state.model_state, new_model_state, mutable)
    metrics = {**dict(metrics or {}), "loss": loss, "grad_norm": _global_norm(grads)}
    new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                              opt_state=opt_state)
    return new_state, metrics

  if jit:
    return compilation.jit(train_step, donate_argnums=(0,) if donate else ())
  return train_step


def make_eval_step(metric_fn: Callable[[PyTree, PyTree, Batch], Dict[str, jax.Array]], *,
                   jit: bool = True) -> Callable[[TrainState, Batch], Dict[str, jax.Array]]:
  """Returns `eval_step(state, batch) -> {name: per-example values [B]}`.

  `metric_fn(params, model_state, batch)` returns per-example metrics (e.g.
  `correct` as 0/1, `bits_per_dim`), which `evaluate` averages exactly over a
  dataset, masking the padding of the last batch.
  """
  def eval_step(state: TrainState, batch: Batch):
    return metric_fn(state.params, state.model_state, batch)

  return compilation.jit(eval_step) if jit else eval_step


def evaluate(eval_step: Callable, state: TrainState, dataset: data_lib.Dataset,
             batch_size: int, *, mesh=None) -> Dict[str, float]:
  """Means of `eval_step`'s per-example metrics over all of `dataset`.

  Batches are taken in order; the last one is padded (with repeats of the first
  example) to `batch_size` so that a single compiled shape serves every batch,
  and the padding is excluded from the means. With a `mesh` each batch is split
  over its devices; over several processes each process reads only its rows
  (`parallel.process_rows`) and the per-example values are gathered on every process
  (`parallel.to_host`), so all of them return the same means.
  """
  n = len(dataset)
  if n == 0:
    raise InvjaxError("evaluate: the dataset is empty")
  rows = slice(0, batch_size)
  if mesh is not None:
    from invjax import parallel  # pylint: disable=g-import-not-at-top
    rows = parallel.process_rows(batch_size, mesh)
  sums: Dict[str, float] = {}
  for start in range(0, n, batch_size):
    idx = np.arange(start, min(start + batch_size, n))
    valid = len(idx)
    idx = np.concatenate([idx, np.zeros(batch_size - valid, idx.dtype)])[rows]
    batch = {"x": dataset.x[idx], "y": dataset.y[idx]}
    if mesh is not None:
      batch = parallel.global_batch(batch, mesh, batch_size)
      out = parallel.to_host(eval_step(state, batch))
    else:
      out = jax.device_get(eval_step(state, batch))
    for name, values in out.items():
      values = np.asarray(values, np.float64)
      if values.shape[:1] != (batch_size,):
        raise InvjaxError(
            f"eval metric '{name}' must be per-example with shape [{batch_size}, ...], "
            f"got {values.shape}")
      sums[name] = sums.get(name, 0.0) + float(values[:valid].sum())
  return {name: total / n for name, total in sums.items()}
