"""The training loop: checkpointed, resumable bit for bit, with progress, logs and evaluation.

Resume contract (`train_loop`): a run stopped or killed after any step restarts from the
last finished checkpoint in `workdir` and reproduces bit for bit the state of an
uninterrupted run: the per-step rng is `fold_in(state.rng, step)`, the data order of epoch
`e` is `batches(fold_in(data_key, e), ...)`, and the logging window that was open at the
checkpoint is saved with it.

Several processes (`jax.distributed`, a TPU pod slice or a GPU cluster) run the same loop
with a `mesh` over all their devices (`invjax.parallel.global_data_mesh`): each process loads
only its rows of every global batch (`batch_iterator(..., mesh=mesh)`), the checkpoints are
written and restored by all of them together (orbax), and the metrics file and progress bar
come from process 0. The global batches, hence the training, do not depend on the number of
processes.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple

from absl import logging
import jax

from invjax import data as data_lib
from invjax._src import process
from invjax._src.checks import ConvergenceError, InvjaxError
from invjax.train import metrics as metrics_lib
from invjax.train.checkpoint import CHECKPOINT_DIR, Checkpointer
from invjax.train.state import Batch, TrainState, evaluate

# The keyword options of `train_loop` a config may set (`loop_kwargs` picks them).
LOOP_OPTIONS = ("num_steps", "batch_size", "log_every", "checkpoint_every", "max_to_keep",
                "eval_every", "eval_batch_size", "seed", "async_checkpoints")


def batch_iterator(data_key: jax.Array, dataset: data_lib.Dataset, batch_size: int,
                   start_step: int = 0, *, mesh=None) -> Iterator[Batch]:
  """Endless `{"x", "y"}` batches; epoch `e` is shuffled by `fold_in(data_key, e)`.

  Batch `i` of epoch `e` is the rows `order[i * batch_size:(i + 1) * batch_size]` of
  `order = data.permutation(fold_in(data_key, e), len(dataset))`, as `data.batches` yields
  them. Starting at `start_step` yields exactly the batches an uninterrupted iterator
  yields from that step on (the epoch's permutation is recomputed, finished
  batches are skipped).

  With a `mesh` (`invjax.parallel`), every batch of `batch_size` (the global batch) is a
  global array split over the mesh's devices, of which this process reads from `dataset` only
  its own rows (`parallel.process_rows`): the same global batches for any number of
  processes. Without one, numpy batches.
  """
  n = len(dataset)
  if batch_size <= 0:
    raise InvjaxError(f"batch_size must be > 0, got {batch_size}")
  per_epoch = data_lib.num_batches(n, batch_size)
  if per_epoch == 0:
    raise InvjaxError(f"batch_size {batch_size} is larger than the dataset ({n})")
  rows = slice(0, batch_size)
  if mesh is not None:
    from invjax import parallel  # pylint: disable=g-import-not-at-top
    rows = parallel.process_rows(batch_size, mesh)
  epoch, skip = divmod(int(start_step), per_epoch)
  while True:
    order = data_lib.permutation(jax.random.fold_in(data_key, epoch), n)
    for i in range(skip, per_epoch):
      idx = order[i * batch_size:(i + 1) * batch_size][rows]
      batch = {"x": dataset.x[idx], "y": dataset.y[idx]}
      yield batch if mesh is None else parallel.global_batch(batch, mesh, batch_size)
    epoch, skip = epoch + 1, 0


def default_data_key(seed: int) -> jax.Array:
  """The data-order key the loop uses when none is given: fold_in(PRNGKey(seed), 1)."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), 1)


Hook = Callable[[int, TrainState, Mapping[str, jax.Array]], None]


def loop_kwargs(config: Any) -> Dict[str, Any]:
  """The `LOOP_OPTIONS` a config (dict or ConfigDict) sets, as `train_loop` keywords.

  Only keys present in `config` are passed; `train_loop`'s own defaults cover the rest.
  """
  return {k: config[k] for k in LOOP_OPTIONS if k in config}


def train_loop(state: TrainState, train_step: Callable, dataset: data_lib.Dataset,
               workdir: str, *, num_steps: int, batch_size: int, log_every: int = 100,
               checkpoint_every: int = 1000, max_to_keep: Optional[int] = 3,
               eval_every: int = 0, eval_batch_size: Optional[int] = None, seed: int = 0,
               async_checkpoints: bool = True, eval_step: Optional[Callable] = None,
               eval_dataset: Optional[data_lib.Dataset] = None,
               data_key: Optional[jax.Array] = None, mesh=None, hooks: Sequence[Hook] = (),
               progress: bool = True) -> Tuple[TrainState, Dict[str, float]]:
  """Trains `state` for `num_steps` steps, resuming from `workdir` if possible.

  Args:
    state: the step-0 state (also the restore template: structure, shardings).
    train_step: from `make_train_step`.
    dataset: training `Dataset`; batches are `{"x": uint8, "y": int32}`.
    workdir: holds `metrics.jsonl` and `checkpoints/`.
    num_steps: total optimizer steps (a resumed run does the remaining ones).
    batch_size: training batch size.
    log_every: steps per logged metrics record (window means).
    checkpoint_every: steps between checkpoints (the last step is always saved).
    max_to_keep: checkpoints kept (None: all).
    eval_every: steps between evaluations (0: only at the end).
    eval_batch_size: evaluation batch size (None: `batch_size`).
    seed: for the default data key.
    async_checkpoints: write checkpoints in the background.
    eval_step: optional, from `make_eval_step`; run on `eval_dataset`.
    eval_dataset: the evaluation `Dataset`.
    data_key: data-order key; default `default_data_key(seed)`.
    mesh: optional `jax.sharding.Mesh` from `invjax.parallel.global_data_mesh` (or
      `maybe_data_mesh`): the state is replicated and each batch split over its "data"
      axis; over several processes, each loads only its rows of every batch.
    hooks: `hook(step, state, metrics)` after every step (step = finished steps).
    progress: show a tqdm bar (process 0 only).

  Returns:
    (final state, last eval metrics or {}). Raises `ConvergenceError` when the
    logged loss is not finite (the last finished checkpoint stays usable).
  """
  num_steps, batch_size = int(num_steps), int(batch_size)
  log_every = max(1, int(log_every))
  ckpt_every = max(1, int(checkpoint_every))
  eval_every = int(eval_every or 0)
  eval_bs = int(eval_batch_size or batch_size)
  if num_steps < 0:
    raise InvjaxError(f"num_steps must be >= 0, got {num_steps}")
  if data_key is None:
    data_key = default_data_key(int(seed))
  if eval_step is not None and eval_dataset is None:
    raise InvjaxError("eval_step given without eval_dataset")
  if mesh is not None:
    from invjax import parallel  # pylint: disable=g-import-not-at-top
    parallel.check_batch_size(batch_size, mesh)
    state = parallel.replicate(state, mesh)

  if process.is_main_process():
    os.makedirs(workdir, exist_ok=True)
  writer = metrics_lib.MetricsWriter(os.path.join(workdir, metrics_lib.METRICS_FILE))
  ckpt = Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), max_to_keep=max_to_keep,
                      async_save=bool(async_checkpoints))
  eval_metrics: Dict[str, float] = {}
  try:
    state, extra, restored = ckpt.restore_latest(state)
    start = int(state.step)
    if restored is not None:
      logging.info("resumed from %s/%d", ckpt.directory, restored)
    writer.truncate_after(start)
    window = list(extra.get("window", []))  # metrics of the open logging window (floats)
    pending = []  # device metrics not yet converted
    batches = batch_iterator(data_key, dataset, batch_size, start, mesh=mesh)

    def run_eval(step):
      metrics = evaluate(eval_step, state, eval_dataset, eval_bs, mesh=mesh)
      logging.info("step %d eval %s", step, metrics_lib.fmt(metrics))
      return {f"eval/{k}": v for k, v in metrics.items()}

    bar = None
    if progress and process.is_main_process():
      from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
      bar = tqdm.tqdm(total=num_steps, initial=start, desc="train", dynamic_ncols=True)
    t0, t0_step = time.perf_counter(), start
    for step in range(start + 1, num_steps + 1):
      batch = next(batches)
      state, metrics = train_step(state, batch)
      pending.append(metrics)
      for hook in hooks:
        hook(step, state, metrics)
      if bar is not None:
        bar.update(1)
      record = {}
      if step % log_every == 0 or step == num_steps:
        window += [metrics_lib.to_floats(m) for m in pending]
        pending = []
        record.update(metrics_lib.window_mean(window))
        window = []
        if not math.isfinite(record.get("loss", 0.0)):
          raise ConvergenceError(
              f"loss is {record['loss']} at step {step}; the last finished checkpoint is "
              f"step {ckpt.latest_step()} in {ckpt.directory}")
        dt = time.perf_counter() - t0
        record[metrics_lib.TIME_PREFIX + "steps_per_sec"] = (step - t0_step) / max(dt, 1e-9)
        t0, t0_step = time.perf_counter(), step
        logging.info("step %d %s", step, metrics_lib.fmt(record))
        if bar is not None:
          bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4g}")
      if eval_step is not None and (step == num_steps or (eval_every and step % eval_every == 0)):
        eval_metrics = run_eval(step)
        record.update(eval_metrics)
      if record:
        writer.write({"step": step, **record})
      if step % ckpt_every == 0 or step == num_steps:
        window += [metrics_lib.to_floats(m) for m in pending]
        pending = []
        ckpt.save(step, state, {"window": window})
    if bar is not None:
      bar.close()
    if eval_step is not None and start >= num_steps and not eval_metrics:
      eval_metrics = run_eval(start)
  finally:
    ckpt.close()
  return state, {k[len("eval/"):]: v for k, v in eval_metrics.items()}
