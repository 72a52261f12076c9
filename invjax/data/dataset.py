"""The `Dataset` record and its validation (uint8 NHWC images, integer labels)."""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from invjax._src.checks import InvjaxError


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Images as stored on disk.

  x: uint8 [N, H, W, C]; y: int32 [N]; index: int32 [N], the position of each
  image in its official split (so poisoned copies can be diffed against the clean set).
  `len(ds)` is the number of examples; `x, y, index = ds` unpacks the arrays.
  """
  x: np.ndarray
  y: np.ndarray
  index: np.ndarray

  def __len__(self):
    return int(self.x.shape[0])

  def __iter__(self):
    return iter((self.x, self.y, self.index))

  def replace(self, **changes) -> "Dataset":
    return dataclasses.replace(self, **changes)

  _replace = replace  # NamedTuple-style spelling

  def take(self, idx) -> "Dataset":
    idx = np.asarray(idx)
    return Dataset(self.x[idx], self.y[idx], self.index[idx])


def validate(x, y, index=None, *, source: str = "dataset",
             num_classes: Optional[int] = None) -> Dataset:
  """Checks dtype/shape/label range and returns a `Dataset`; errors name `source`."""
  x = np.asarray(x)
  y = np.asarray(y)
  if x.dtype != np.uint8:
    raise InvjaxError(f"{source}: images 'x' must be uint8, got {x.dtype}")
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise InvjaxError(
        f"{source}: images 'x' must have shape [N, H, W, C] with C in (1, 3), got {x.shape}")
  if y.ndim != 1 or y.shape[0] != x.shape[0]:
    raise InvjaxError(
        f"{source}: labels 'y' must have shape [{x.shape[0]}] to match 'x', got {y.shape}")
  if not np.issubdtype(y.dtype, np.integer):
    raise InvjaxError(f"{source}: labels 'y' must be integers, got {y.dtype}")
  if y.size and y.min() < 0:
    raise InvjaxError(f"{source}: labels 'y' must be >= 0, got min {y.min()}")
  if num_classes is not None and y.size and y.max() >= num_classes:
    raise InvjaxError(
        f"{source}: labels 'y' must lie in [0, {num_classes}), got max {y.max()}")
  if index is None:
    index = np.arange(x.shape[0], dtype=np.int32)
  index = np.asarray(index)
  if index.shape != y.shape:
    raise InvjaxError(f"{source}: 'index' must have shape {y.shape}, got {index.shape}")
  return Dataset(x, y.astype(np.int32), index.astype(np.int32))
