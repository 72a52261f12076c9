"""Orbax checkpoints of a `TrainState` (atomic, exact resume) and restoring trained variables.

Checkpoints are written by orbax into a temporary directory renamed on completion; a step
directory that lacks orbax's completion metadata (a crash on a file system without atomic
rename, a manual copy) is moved aside, never restored. `restore_variables(workdir)` reads the
last finished checkpoint of any run without a template (any model, any optimizer).

Several processes (`jax.distributed`): every process creates the `Checkpointer` and calls
`save` / `restore` with the same steps, as orbax's multi-host checkpointing requires (each
writes the shards of its own devices, process 0 the metadata and the json `extra`, with
barriers between); the checkpoint directory is one directory all processes see (a bucket,
NFS). Incomplete step directories are moved aside by process 0 while the others wait.
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from invjax._src import process
from invjax._src.checks import InvjaxError
from invjax.train.state import TrainState

CHECKPOINT_DIR = "checkpoints"


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
    if process.is_main_process():
      for step in self.all_steps():
        if not self._is_complete(step):
          src = os.path.join(self.directory, str(step))
          dst = f"{src}.incomplete-{int(time.time() * 1e3)}"
          logging.warning("checkpoint %s is incomplete; moved to %s", src, dst)
          os.replace(src, dst)
          moved = True
    if process.is_multiprocess():  # the others list the directory once process 0 is done
      process.sync("invjax_checkpoint_quarantine")
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


def restore_variables(workdir: str) -> Tuple[Dict[str, Any], int]:
  """(Flax variables, step) of the last finished checkpoint of a run.

  Args:
    workdir: a run's workdir (holding `checkpoints/`) or the checkpoint directory itself.

  Restores the saved `TrainState` without a template (whatever optimizer trained it) and
  returns `{"params": ..., **model_state}` for `model.apply`. The arrays are restored whole
  onto this process's first device, whatever devices and processes wrote them (the shapes
  and dtypes come from the checkpoint's metadata), e.g. a pod slice's run read on one CPU.
  """
  path = os.path.abspath(workdir)
  if os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
    path = os.path.join(path, CHECKPOINT_DIR)
  if not os.path.isdir(path):
    raise InvjaxError(f"no checkpoint directory at {path}")
  handlers = {"state": ocp.StandardCheckpointHandler(), "extra": ocp.JsonCheckpointHandler()}
  with ocp.CheckpointManager(path, item_handlers=handlers) as manager:
    step = manager.latest_step()
    if step is None:
      raise InvjaxError(f"no finished checkpoint in {path}")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device)
        if hasattr(m, "shape") and hasattr(m, "dtype") else m,
        manager.item_metadata(step)["state"])
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
  state = out["state"]
  variables = {"params": state["params"], **dict(state.get("model_state") or {})}
  return jax.tree.map(jnp.asarray, variables), int(step)
