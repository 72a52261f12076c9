"""Data parallelism with `jax.sharding`: one mesh axis "data" over the local devices.

The train state is replicated on every device, each batch is split along its
leading axis, and the unchanged jitted step (`invjax.train.make_train_step`)
runs data-parallel: XLA's SPMD partitioner inserts the gradient all-reduce. The
same code runs on 1 CPU, on N fake CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=N`), on GPUs or on a TPU host.

  mesh = data_mesh()
  state = replicate(state, mesh)
  state, metrics = train_step(state, shard_batch(batch, mesh))
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

from invjax.checks import InvjaxError

DATA_AXIS = "data"


def data_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh with axis "data" over `devices` (default: `jax.local_devices()`)."""
  devices = list(jax.local_devices() if devices is None else devices)
  if not devices:
    raise InvjaxError("data_mesh: no devices given")
  return Mesh(np.asarray(devices, dtype=object), (DATA_AXIS,))


def num_data_shards(mesh: Mesh) -> int:
  return int(mesh.shape[DATA_AXIS])


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over "data", other axes whole."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "batch_size") -> None:
  """Raises unless `batch_size` is a positive multiple of the mesh's device count."""
  n = num_data_shards(mesh)
  if batch_size <= 0 or batch_size % n:
    raise InvjaxError(
        f"{name} ({batch_size}) must be a positive multiple of the number of devices "
        f"({n}) for data parallelism; use e.g. {max(n, (batch_size // n) * n)}")


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Puts every array of `batch` on the mesh, split along its leading axis."""
  sharding = batch_sharding(mesh)

  def put(x):
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    if np.ndim(x) == 0:
      raise InvjaxError("shard_batch: every array needs a leading batch axis, got a scalar")
    check_batch_size(int(np.shape(x)[0]), mesh, name="batch size (leading axis)")
    return jax.device_put(x, sharding)

  return jax.tree.map(put, batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """A copy of `tree` (e.g. a `TrainState`) with every array on all mesh devices."""
  return jax.device_put(tree, replicated_sharding(mesh))
