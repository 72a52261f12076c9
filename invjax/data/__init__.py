"""Data: embedded mini CIFAR-10, local .npz directories, tensorflow-datasets; batching.

`load(name, split, data_dir=None)` picks the source:
  * `data_dir` given: local `.npz` files (`<split>.npz` or `<split>_part*.npz`);
  * `name == "cifar10_mini"`: the embedded subset shipped in the package;
  * otherwise tensorflow-datasets (`cifar10`, `mnist`).
"""
from invjax.data.batching import batches, num_batches, permutation, to_float, to_uint8
from invjax.data.dataset import Dataset, validate
from invjax.data.embedded import CIFAR10_CLASSES, load_embedded
from invjax.data.local import load_dir, load_npz, save_npz
from invjax.data.tfds_loader import load_tfds


def load(name: str = "cifar10_mini", split: str = "train", data_dir: str | None = None,
         *, num_classes: int | None = 10) -> Dataset:
  if data_dir:
    return load_dir(data_dir, split, num_classes=num_classes)
  if name == "cifar10_mini":
    return load_embedded(split)
  return load_tfds(name, split)


def public_private_split(test: Dataset, boundary: int = 5000):
  """The documented passeurs split of the CIFAR-10 test set, by official index:
  public = official test indices < `boundary` (0-4999), private = the rest (5000-9999)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  pub = np.where(test.index < boundary)[0]
  priv = np.where(test.index >= boundary)[0]
  return test.take(pub), test.take(priv)
