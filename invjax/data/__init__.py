"""Data: embedded mini CIFAR-10, local .npz directories, tensorflow-datasets; batching, augmentation.

`load(name, split, data_dir=None)` picks the source:
  * `data_dir` given: local `.npz` files (`<split>.npz` or `<split>_part*.npz`);
  * `name == "cifar10_mini"`: the embedded subset shipped in the package;
  * otherwise tensorflow-datasets (`cifar10`, `mnist`).
"""
from invjax.data.augment import flip_and_crop
from invjax.data.batching import batches, num_batches, permutation, to_float, to_uint8
from invjax.data.dataset import Dataset, validate
from invjax.data.embedded import CIFAR10_CLASSES, load_embedded
from invjax.data.local import load_dir, load_npz, save_npz
from invjax.data.tfds_loader import load_tfds

__all__ = ["CIFAR10_CLASSES", "Dataset", "batches", "flip_and_crop", "load", "load_dir",
           "load_embedded", "load_npz", "load_tfds", "num_batches", "permutation", "save_npz",
           "take_prefix", "to_float", "to_uint8", "validate"]


def load(name: str = "cifar10_mini", split: str = "train", data_dir: str | None = None,
         *, num_classes: int | None = 10) -> Dataset:
  """The `split` of dataset `name`, or of the local `.npz` files in `data_dir` (module doc)."""
  if data_dir:
    return load_dir(data_dir, split, num_classes=num_classes)
  if name == "cifar10_mini":
    return load_embedded(split)
  return load_tfds(name, split)


def take_prefix(dataset: Dataset, limit: int) -> Dataset:
  """The first `limit` examples of `dataset` (0 or more than its size: all of it)."""
  if not limit or limit >= len(dataset):
    return dataset
  import numpy as np  # pylint: disable=g-import-not-at-top
  return dataset.take(np.arange(int(limit)))
