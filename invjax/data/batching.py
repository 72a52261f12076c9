"""Deterministic shuffling/batching from a PRNG key, and uint8 -> [0, 1] float conversion."""
from __future__ import annotations

from typing import Iterator, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from invjax._src.checks import InvjaxError
from invjax.data.dataset import Dataset


def to_float(x_uint8) -> jax.Array:
  """uint8 pixels in 0..255 -> float32 in [0, 1]. The only place this conversion lives."""
  if jnp.result_type(x_uint8) != jnp.uint8:
    raise InvjaxError(f"to_float expects uint8 images, got {jnp.result_type(x_uint8)}")
  return jnp.asarray(x_uint8, jnp.float32) / 255.0


def to_uint8(x_float) -> np.ndarray:
  """float in [0, 1] -> uint8 (rounded, clipped): the inverse of `to_float` on the grid."""
  return np.asarray(jnp.clip(jnp.round(jnp.asarray(x_float) * 255.0), 0, 255)).astype(np.uint8)


def permutation(key: jax.Array, n: int) -> np.ndarray:
  return np.asarray(jax.random.permutation(key, n))


def num_batches(n: int, batch_size: int, drop_remainder: bool = True) -> int:
  return n // batch_size if drop_remainder else -(-n // batch_size)


def batches(key: jax.Array | None, dataset: Dataset, batch_size: int, *,
            drop_remainder: bool = True) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
  """Yields (x uint8, y int32) batches; shuffled by `key` (None: in order).

  The same key gives the same batches; a resumed run recomputes the epoch's
  permutation from its key and skips the finished batches.
  """
  n = len(dataset)
  if batch_size <= 0:
    raise InvjaxError(f"batch_size must be > 0, got {batch_size}")
  if drop_remainder and batch_size > n:
    raise InvjaxError(f"batch_size {batch_size} is larger than the dataset ({n} examples)")
  order = np.arange(n) if key is None else permutation(key, n)
  for i in range(num_batches(n, batch_size, drop_remainder)):
    idx = order[i * batch_size:(i + 1) * batch_size]
    yield dataset.x[idx], dataset.y[idx]
