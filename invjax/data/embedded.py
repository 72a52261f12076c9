"""The embedded mini CIFAR-10 shipped inside the package (see MINI_CIFAR10.md)."""
from __future__ import annotations

import os

import numpy as np

from invjax._src.checks import InvjaxError
from invjax.data.dataset import Dataset, validate

EMBEDDED_PATH = os.path.join(os.path.dirname(__file__), "cifar10_mini.npz")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                   "horse", "ship", "truck")


def load_embedded(split: str) -> Dataset:
  """1,000 train images (100 per class) and 500 test images (50 per class)."""
  if split not in ("train", "test"):
    raise InvjaxError(f"embedded cifar10_mini has splits 'train' and 'test', got '{split}'")
  with np.load(EMBEDDED_PATH, allow_pickle=False) as f:
    return validate(f[f"x_{split}"], f[f"y_{split}"], f[f"index_{split}"],
                    source=f"{EMBEDDED_PATH}[{split}]", num_classes=10)
