"""Local `.npz` files: arrays `x` (uint8 NHWC), `y` (int), optional `index`.

A directory holds a split as `<split>.npz` or as parts `<split>_part*.npz`
(joined in name order), e.g. `../shared/data/cifar10/` has `train_part1.npz`,
`train_part2.npz` and `test.npz`.
"""
from __future__ import annotations

import glob
import os
import zipfile
from typing import Optional

import numpy as np

from invjax._src import io
from invjax._src.checks import InvjaxError
from invjax.data.dataset import Dataset, validate


def load_npz(path: str, *, num_classes: Optional[int] = None) -> Dataset:
  """Loads one `.npz` file with arrays `x`, `y` (and optionally `index`).

  A file that is missing, empty, truncated, not an archive, or holds object (pickled) arrays
  raises `InvjaxError` naming the file and the problem; invjax never unpickles a data file.
  """
  if not os.path.isfile(path):
    raise InvjaxError(f"data file not found: {path}")
  if os.path.getsize(path) == 0:
    raise InvjaxError(f"{path}: the file is empty (0 bytes); expected an .npz archive with "
                      "arrays 'x' (uint8 NHWC) and 'y' (int labels)")
  try:
    f = np.load(path, allow_pickle=False)
    if not isinstance(f, np.lib.npyio.NpzFile):
      raise InvjaxError(f"{path}: holds a single array, not an .npz archive with arrays "
                        "'x' and 'y'")
    with f:
      missing = [k for k in ("x", "y") if k not in f.files]
      if missing:
        raise InvjaxError(
            f"{path}: missing array(s) {missing}; expected 'x' (uint8 NHWC) and 'y' "
            f"(int labels), found {sorted(f.files)}")
      arrays = {k: f[k] for k in ("x", "y", "index") if k in f.files}
  except InvjaxError:
    raise
  except ValueError as e:  # numpy's refusal to unpickle: object arrays or a pickle file
    if "pickle" not in str(e):
      raise InvjaxError(f"{path}: not a readable .npz archive: {e}") from e
    raise InvjaxError(f"{path}: holds object (pickled) data; invjax reads only numeric arrays "
                      "'x' (uint8 NHWC) and 'y' (int labels) and never unpickles a data "
                      "file") from e
  except (zipfile.BadZipFile, EOFError, OSError) as e:
    raise InvjaxError(f"{path}: not a readable .npz archive (corrupt or truncated?): "
                      f"{type(e).__name__}: {e}") from e
  return validate(arrays["x"], arrays["y"], arrays.get("index"), source=path,
                  num_classes=num_classes)


def split_files(data_dir: str, split: str) -> list[str]:
  if not os.path.isdir(data_dir):
    raise InvjaxError(f"data directory does not exist: {data_dir}")
  single = os.path.join(data_dir, f"{split}.npz")
  parts = sorted(glob.glob(os.path.join(data_dir, f"{split}_part*.npz")))
  files = [single] if os.path.isfile(single) else parts
  if not files:
    raise InvjaxError(
        f"{data_dir}: no file for split '{split}' (expected {split}.npz or "
        f"{split}_part*.npz); found {sorted(os.listdir(data_dir))}")
  return files


def load_dir(data_dir: str, split: str, *, num_classes: Optional[int] = None) -> Dataset:
  """Loads split `split` from `data_dir` (one file or parts joined in order)."""
  sets = [load_npz(f, num_classes=num_classes) for f in split_files(data_dir, split)]
  if len(sets) == 1:
    return sets[0]
  return Dataset(*(np.concatenate(arrs) for arrs in zip(*sets)))


def save_npz(path: str, dataset: Dataset) -> None:
  """Writes `dataset` as uint8 `.npz` atomically (temp file, then rename)."""
  validate(dataset.x, dataset.y, dataset.index, source=path)
  io.save_npz(path, x=dataset.x, y=dataset.y, index=dataset.index)
