"""Generic training: train state, jitted steps, the resumable loop, checkpoints, metrics, recipes.

Used for flows, invertible classifiers, CNN teachers and distillation alike; the only
model-specific piece is the loss function (`invjax.train.state`). Modules:
  state       `TrainState`, `make_train_step`, `make_eval_step`, `evaluate`
  loop        `train_loop` (resume bit for bit from the last finished checkpoint), `batch_iterator`
  checkpoint  `Checkpointer` (orbax, atomic), `restore_variables(workdir)`
  metrics     `metrics.jsonl` writing and reading
  optim       `make_optimizer` (AdamW, warm-up + cosine decay, clipping)
  recipes     the trainings the launch scripts run: flow density, invertible classifier,
              CNN teacher
"""
from invjax.train.checkpoint import CHECKPOINT_DIR, Checkpointer, restore_variables
from invjax.train.loop import (LOOP_OPTIONS, batch_iterator, default_data_key, loop_kwargs,
                               train_loop)
from invjax.train.metrics import METRICS_FILE, TIME_PREFIX, MetricsWriter, read_metrics
from invjax.train.optim import OPTIMIZER_OPTIONS, make_optimizer, optimizer_kwargs
from invjax.train.state import (TrainState, count_params, evaluate, make_eval_step,
                                make_train_step, split_variables)

__all__ = ["CHECKPOINT_DIR", "Checkpointer", "LOOP_OPTIONS", "METRICS_FILE", "MetricsWriter",
           "OPTIMIZER_OPTIONS", "TIME_PREFIX", "TrainState", "batch_iterator", "count_params",
           "default_data_key", "evaluate", "loop_kwargs", "make_eval_step", "make_optimizer",
           "make_train_step", "optimizer_kwargs", "read_metrics", "restore_variables",
           "split_variables", "train_loop"]
