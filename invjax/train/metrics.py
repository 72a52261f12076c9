"""Training metrics: one JSON object per line in `metrics.jsonl`, window means, formatting."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, Sequence

import jax
import numpy as np

from invjax._src import io
from invjax._src import process
from invjax._src.checks import InvjaxError

METRICS_FILE = "metrics.jsonl"
TIME_PREFIX = "time/"  # metrics under this prefix are wall-clock and differ between runs


class MetricsWriter:
  """Appends one json object per line to `path` (`{"step": s, name: value, ...}`).

  In a multi-process run only process 0 writes (`invjax._src.process.is_main_process`); the
  others' writes are no-ops.
  """

  def __init__(self, path: str):
    self.path = path
    self.active = process.is_main_process()
    if self.active:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

  def truncate_after(self, step: int) -> None:
    """Drops records with `step > step` (and torn lines), atomically."""
    if not self.active or not os.path.exists(self.path):
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
    io.write_text(self.path, "".join(line + "\n" for line in kept))

  def write(self, record: Mapping[str, Any]) -> None:
    if not self.active:
      return
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


def window_mean(window: Sequence[Mapping[str, float]]) -> Dict[str, float]:
  names = sorted({k for m in window for k in m})
  return {k: float(np.mean([m[k] for m in window if k in m])) for k in names}


def to_floats(metrics: Mapping[str, Any]) -> Dict[str, float]:
  out = {}
  for k, v in jax.device_get(dict(metrics)).items():
    v = np.asarray(v)
    if v.size != 1:
      raise InvjaxError(f"train metric '{k}' must be a scalar, got shape {v.shape}")
    out[k] = float(v.reshape(()))
  return out


def fmt(metrics: Mapping[str, float]) -> str:
  return " ".join(f"{k}={v:.5g}" for k, v in sorted(metrics.items()))
