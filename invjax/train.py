"""Generic training: train state, jitted step functions, orbax checkpoints with exact resume.

Used for flows, invertible classifiers, CNN teachers and distillation alike. The
only model-specific piece is the loss function, with the signature

  loss_fn(params, model_state, batch, rng) -> (loss, (new_model_state, metrics))

where `params` is the "params" collection, `model_state` a dict of the other
(mutable) Flax collections ("batch_stats", "spectral", ...; `{}` when none),
`batch` a dict `{"x": uint8 [B, H, W, C], "y": int32 [B]}` as produced by
`invjax.data.batches` (convert with `invjax.data.to_float` inside the loss, so
the uint8 batch is what travels to the device), `rng` a fresh PRNG key for this
step (dropout, dequantisation noise, log-det estimators), `loss` a scalar, and
`metrics` a dict of scalars that are logged (averaged over the logging window).

Resume contract (`train_loop`): a run stopped or killed after any step restarts
from the last finished checkpoint in `workdir` and reproduces bit for bit the
state of an uninterrupted run: the per-step rng is `fold_in(state.rng, step)`,
the data order of epoch `e` is `batches(fold_in(data_key, e), ...)`, and the
logging window that was open at the checkpoint is saved with it. Checkpoints are
written by orbax into a temporary directory renamed on completion; a step
directory that lacks orbax's completion metadata (a crash on a file system
without atomic rename, a manual copy) is moved aside, never restored.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from invjax._src import compilation
from invjax import data as data_lib
from invjax._src.checks import ConvergenceError, InvjaxError

PyTree = Any
Batch = Dict[str, Any]
LossFn = Callable[..., Tuple[jax.Array, Tuple[PyTree, Dict[str, jax.Array]]]]

METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
TIME_PREFIX = "time/"  # metrics under this prefix are wall-clock and differ between runs


# ----------------------------------------------------------------------------- state


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


def _merge_model_state(old: Mapping[str, PyTree], new: Optional[Mapping[str, PyTree]],
                       mutable: bool | Sequence[str]) -> Dict[str, PyTree]:
  out = dict(old)
  if not new or mutable is False:
    return out
  names = list(new) if mutable is True else [m for m in mutable if m in new]
  for name in names:
    out[name] = new[name]
  return out


# ----------------------------------------------------------------------------- steps


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
    metrics = {**dict(metrics or {}), "loss": loss, "grad_norm": optax.global_norm(grads)}
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
  and the padding is excluded from the means.
  """
  n = len(dataset)
  if n == 0:
    raise InvjaxError("evaluate: the dataset is empty")
  if mesh is not None:
    from invjax import parallel  # pylint: disable=g-import-not-at-top
    parallel.check_batch_size(batch_size, mesh)
  sums: Dict[str, float] = {}
  for start in range(0, n, batch_size):
    idx = np.arange(start, min(start + batch_size, n))
    valid = len(idx)
    idx = np.concatenate([idx, np.zeros(batch_size - valid, idx.dtype)])
    batch = {"x": dataset.x[idx], "y": dataset.y[idx]}
    if mesh is not None:
      batch = parallel.shard_batch(batch, mesh)
    out = jax.device_get(eval_step(state, batch))
    for name, values in out.items():
      values = np.asarray(values, np.float64)
      if values.shape[:1] != (batch_size,):
        raise InvjaxError(
            f"eval metric '{name}' must be per-example with shape [{batch_size}, ...], "
            f"got {values.shape}")
      sums[name] = sums.get(name, 0.0) + float(values[:valid].sum())
  return {name: total / n for name, total in sums.items()}


# ----------------------------------------------------------------------------- data


def batch_iterator(data_key: jax.Array, dataset: data_lib.Dataset, batch_size: int,
                   start_step: int = 0) -> Iterator[Batch]:
  """Endless `{"x", "y"}` batches; epoch `e` is shuffled by `fold_in(data_key, e)`.

  Starting at `start_step` yields exactly the batches an uninterrupted iterator
  yields from that step on (the epoch's permutation is recomputed, finished
  batches are skipped).
  """
  per_epoch = data_lib.num_batches(len(dataset), batch_size)
  if per_epoch == 0:
    raise InvjaxError(f"batch_size {batch_size} is larger than the dataset ({len(dataset)})")
  epoch, skip = divmod(int(start_step), per_epoch)
  while True:
    key = jax.random.fold_in(data_key, epoch)
    for i, (x, y) in enumerate(data_lib.batches(key, dataset, batch_size)):
      if i >= skip:
        yield {"x": x, "y": y}
    epoch, skip = epoch + 1, 0


# ----------------------------------------------------------------------------- checkpoints


class Checkpointer:
  """Orbax checkpoints of a `TrainState` plus a small json `extra` dict.

  Saves go through `ocp.CheckpointManager`: each step is written into
  `<step>.orbax-checkpoint-tmp...` and renamed to `<step>` once complete, so a
  crash mid-save leaves only a temporary directory, which is never listed.
  As a second guard, `restore_latest` only accepts step directories holding
  orbax's `_CHECKPOINT_METADATA` and both items; any other step directory is
  renamed to `<step>.incomplete-<time>` (kept for inspection, never deleted).
  Old checkpoints are deleted (beyond `max_to_keep`) only after a newer one is
  finalised, so a finished checkpoint is never lost to a crash.
  """

  def __init__(self, directory: str, *, max_to_keep: Optional[int] = 3,
               async_save: bool = True):
    if max_to_keep is not None and max_to_keep < 1:
      raise InvjaxError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def all_steps(self) -> Sequence[int]:
    return sorted(self._manager.all_steps())

  def _is_complete(self, step: int) -> bool:
    path = os.path.join(self.directory, str(step))
    return (os.path.isfile(os.path.join(path, "_CHECKPOINT_METADATA"))
            and os.path.isdir(os.path.join(path, "state"))
            and os.path.isdir(os.path.join(path, "extra")))

  def _quarantine_incomplete(self) -> None:
    moved = False
    for step in self.all_steps():
      if not self._is_complete(step):
        src = os.path.join(self.directory, str(step))
        dst = f"{src}.incomplete-{int(time.time() * 1e3)}"
        logging.warning("checkpoint %s is incomplete; moved to %s", src, dst)
        os.replace(src, dst)
        moved = True
    if moved:
      self._manager.reload()

  def latest_step(self) -> Optional[int]:
    """The last complete checkpoint's step (incomplete step directories moved aside)."""
    self._quarantine_incomplete()
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: TrainState, extra: Optional[Mapping[str, Any]] = None,
           *, force: bool = False) -> None:
    """Starts writing checkpoint `step` (asynchronously unless disabled)."""
    if step in self._manager.all_steps():
      return  # already written (e.g. the final step equals a periodic one)
    self._manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(dict(extra or {}))),
                       force=force)

  def restore(self, step: int, template: TrainState) -> Tuple[TrainState, Dict[str, Any]]:
    """Restores checkpoint `step` into the structure, dtypes and shardings of `template`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    try:
      out = self._manager.restore(int(step), args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types for a structure mismatch
      raise InvjaxError(
          f"checkpoint {self.directory}/{step} does not match the current train state "
          f"(different model or optimizer config?): {type(e).__name__}: {e}") from e
    return out["state"], dict(out["extra"] or {})

  def restore_latest(self, template: TrainState
                     ) -> Tuple[TrainState, Dict[str, Any], Optional[int]]:
    """(state, extra, step) of the last complete checkpoint, or (template, {}, None)."""
    step = self.latest_step()
    if step is None:
      return template, {}, None
    state, extra = self.restore(step, template)
    return state, extra, step

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


# ----------------------------------------------------------------------------- metrics


class MetricsWriter:
  """Appends one json object per line to `path` (`{"step": s, name: value, ...}`)."""

  def __init__(self, path: str):
    self.path = path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

  def truncate_after(self, step: int) -> None:
    """Drops records with `step > step` (and torn lines), atomically."""
    if not os.path.exists(self.path):
      return
    kept = []
    with open(self.path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue  # a line torn by a crash
        if record.get("step", 0) <= step:
          kept.append(json.dumps(record))
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.write("".join(line + "\n" for line in kept))
    os.replace(tmp, self.path)

  def write(self, record: Mapping[str, Any]) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(dict(record)) + "\n")
      f.flush()


def read_metrics(workdir_or_path: str) -> list:
  """The records of a metrics file (or of `workdir/metrics.jsonl`)."""
  path = workdir_or_path
  if os.path.isdir(path):
    path = os.path.join(path, METRICS_FILE)
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _window_mean(window: Sequence[Mapping[str, float]]) -> Dict[str, float]:
  names = sorted({k for m in window for k in m})
  return {k: float(np.mean([m[k] for m in window if k in m])) for k in names}


def _to_floats(metrics: Mapping[str, Any]) -> Dict[str, float]:
  out = {}
  for k, v in jax.device_get(dict(metrics)).items():
    v = np.asarray(v)
    if v.size != 1:
      raise InvjaxError(f"train metric '{k}' must be a scalar, got shape {v.shape}")
    out[k] = float(v.reshape(()))
  return out


# ----------------------------------------------------------------------------- loop


def _cfg(config, name: str, default=None):
  if isinstance(config, Mapping):
    return config.get(name, default)
  return getattr(config, name, default) if hasattr(config, name) else default


def default_data_key(seed: int) -> jax.Array:
  """The data-order key the loop uses when none is given: fold_in(PRNGKey(seed), 1)."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), 1)


Hook = Callable[[int, TrainState, Mapping[str, jax.Array]], None]


def train_loop(config, state: TrainState, train_step: Callable, dataset: data_lib.Dataset,
               workdir: str, *, eval_step: Optional[Callable] = None,
               eval_dataset: Optional[data_lib.Dataset] = None,
               data_key: Optional[jax.Array] = None, mesh=None, hooks: Sequence[Hook] = (),
               progress: bool = True) -> Tuple[TrainState, Dict[str, float]]:
  """Trains `state` for `config.num_steps` steps, resuming from `workdir` if possible.

  Args:
    config: mapping/ConfigDict with `num_steps`, `batch_size`, and optionally
      `log_every` (100), `checkpoint_every` (1000), `max_to_keep` (3),
      `eval_every` (0: only at the end), `eval_batch_size` (batch_size),
      `seed` (0, for the default data key), `async_checkpoints` (True).
    state: the step-0 state (also the restore template: structure, shardings).
    train_step: from `make_train_step`.
    dataset: training `Dataset`; batches are `{"x": uint8, "y": int32}`.
    workdir: holds `metrics.jsonl` and `checkpoints/`.
    eval_step: optional, from `make_eval_step`; run on `eval_dataset`.
    data_key: data-order key; default `default_data_key(config.seed)`.
    mesh: optional `jax.sharding.Mesh` from `invjax.parallel.data_mesh`: the
      state is replicated and each batch split over its "data" axis.
    hooks: `hook(step, state, metrics)` after every step (step = finished steps).
    progress: show a tqdm bar.

  Returns:
    (final state, last eval metrics or {}). Raises `ConvergenceError` when the
    logged loss is not finite (the last finished checkpoint stays usable).
  """
  num_steps = int(_cfg(config, "num_steps"))
  batch_size = int(_cfg(config, "batch_size"))
  log_every = max(1, int(_cfg(config, "log_every", 100)))
  ckpt_every = max(1, int(_cfg(config, "checkpoint_every", 1000)))
  eval_every = int(_cfg(config, "eval_every", 0) or 0)
  eval_bs = int(_cfg(config, "eval_batch_size", None) or batch_size)
  if num_steps < 0:
    raise InvjaxError(f"config.num_steps must be >= 0, got {num_steps}")
  if data_key is None:
    data_key = default_data_key(int(_cfg(config, "seed", 0)))
  if eval_step is not None and eval_dataset is None:
    raise InvjaxError("eval_step given without eval_dataset")
  if mesh is not None:
    from invjax import parallel  # pylint: disable=g-import-not-at-top
    parallel.check_batch_size(batch_size, mesh)
    state = parallel.replicate(state, mesh)

  os.makedirs(workdir, exist_ok=True)
  writer = MetricsWriter(os.path.join(workdir, METRICS_FILE))
  ckpt = Checkpointer(os.path.join(workdir, CHECKPOINT_DIR),
                      max_to_keep=_cfg(config, "max_to_keep", 3),
                      async_save=bool(_cfg(config, "async_checkpoints", True)))
  eval_metrics: Dict[str, float] = {}
  try:
    state, extra, restored = ckpt.restore_latest(state)
    start = int(state.step)
    if restored is not None:
      logging.info("resumed from %s/%d", ckpt.directory, restored)
    writer.truncate_after(start)
    window = list(extra.get("window", []))  # metrics of the open logging window (floats)
    pending = []  # device metrics not yet converted
    batches = batch_iterator(data_key, dataset, batch_size, start)

    def run_eval(step):
      metrics = evaluate(eval_step, state, eval_dataset, eval_bs, mesh=mesh)
      logging.info("step %d eval %s", step, _fmt(metrics))
      return {f"eval/{k}": v for k, v in metrics.items()}

    bar = None
    if progress:
      from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
      bar = tqdm.tqdm(total=num_steps, initial=start, desc="train", dynamic_ncols=True)
    t0, t0_step = time.perf_counter(), start
    for step in range(start + 1, num_steps + 1):
      batch = next(batches)
      if mesh is not None:
        batch = parallel.shard_batch(batch, mesh)
      state, metrics = train_step(state, batch)
      pending.append(metrics)
      for hook in hooks:
        hook(step, state, metrics)
      if bar is not None:
        bar.update(1)
      record = {}
      if step % log_every == 0 or step == num_steps:
        window += [_to_floats(m) for m in pending]
        pending = []
        record.update(_window_mean(window))
        window = []
        if not math.isfinite(record.get("loss", 0.0)):
          raise ConvergenceError(
              f"loss is {record['loss']} at step {step}; the last finished checkpoint is "
              f"step {ckpt.latest_step()} in {ckpt.directory}")
        dt = time.perf_counter() - t0
        record[TIME_PREFIX + "steps_per_sec"] = (step - t0_step) / max(dt, 1e-9)
        t0, t0_step = time.perf_counter(), step
        logging.info("step %d %s", step, _fmt(record))
        if bar is not None:
          bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4g}")
      if eval_step is not None and (step == num_steps or (eval_every and step % eval_every == 0)):
        eval_metrics = run_eval(step)
        record.update(eval_metrics)
      if record:
        writer.write({"step": step, **record})
      if step % ckpt_every == 0 or step == num_steps:
        window += [_to_floats(m) for m in pending]
        pending = []
        ckpt.save(step, state, {"window": window})
    if bar is not None:
      bar.close()
    if eval_step is not None and start >= num_steps and not eval_metrics:
      eval_metrics = run_eval(start)
  finally:
    ckpt.close()
  return state, {k[len("eval/"):]: v for k, v in eval_metrics.items()}


def _fmt(metrics: Mapping[str, float]) -> str:
  return " ".join(f"{k}={v:.5g}" for k, v in sorted(metrics.items()))
