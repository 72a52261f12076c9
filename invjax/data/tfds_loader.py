"""tensorflow-datasets loaders (`cifar10`, `mnist`): used when tfds data or internet is there.

tensorflow-datasets is imported lazily: the rest of invjax works without it
being importable (e.g. without TensorFlow installed).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from invjax._src.checks import InvjaxError
from invjax.data.dataset import Dataset, validate

TFDS_NAMES = {"cifar10": 10, "mnist": 10}


def load_tfds(name: str, split: str, data_dir: Optional[str] = None,
              download: bool = True) -> Dataset:
  """Loads a whole split as numpy arrays through `tfds.as_numpy(tfds.load(...))`."""
  if name not in TFDS_NAMES:
    raise InvjaxError(f"unknown tfds dataset '{name}', expected one of {sorted(TFDS_NAMES)}")
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise InvjaxError(f"tensorflow-datasets is not importable ({e}); "
                      "use --data_dir with .npz files or the embedded data") from e
  ds = tfds.load(name, split=split, data_dir=data_dir, batch_size=-1,
                 download=download, as_supervised=True)
  x, y = tfds.as_numpy(ds)
  return validate(np.asarray(x, np.uint8), np.asarray(y), None,
                  source=f"tfds:{name}/{split}", num_classes=TFDS_NAMES[name])
