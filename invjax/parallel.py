"""Data parallelism with `jax.sharding`: one mesh axis "data" over the local devices.

The train state is replicated on every device, each batch is split along its
leading axis, and the unchanged jitted step (`invjax.train.make_train_step`)
runs data-parallel: XLA's SPMD partitioner inserts the gradient all-reduce. The
same code runs on 1 CPU, on N fake CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=N`), on GPUs or on a TPU host.

  mesh = data_mesh()
  state = replicate(state, mesh)
  state, metrics = train_step(state, shard_batch(batch, mesh))

On a CPU, JAX's default of one device for the whole machine leaves speed unused by the
per-example computations of attacks: XLA:CPU's default convolution library (YNNPACK) runs
each convolution on one thread. `cpu_cores_as_devices()` (called right after
`import jax`) gives the CPU backend one device per core, and `call_sharded(fn, x, y)`
splits a batch over them (padding it to a multiple of the device count and cutting the
outputs back). Splitting a batch of per-example work over one device per core beats one
device with multi-threaded convolutions on a CPU (the figures are in docs/results/attacks.md,
measured by `bench/attacks.py`). `invjax._src.compilation.jit` picks the convolution
library from the number of devices a call's arguments span.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Optional, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

from invjax._src.checks import InvjaxError

DATA_AXIS = "data"
_DEVICE_COUNT_FLAG = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


def available_cores() -> int:
  """CPU cores this process may run on (its affinity mask; `os.cpu_count()` elsewhere)."""
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:  # pragma: no cover (macOS, Windows)
    return max(1, os.cpu_count() or 1)


def cpu_cores_as_devices(num_devices: Optional[int] = None) -> int:
  """Makes JAX's CPU backend expose `num_devices` devices (default: one per core).

  Call it right after `import jax`, before any JAX operation: JAX fixes its devices when
  the first operation starts a backend. It changes only the CPU backend (a GPU or TPU
  stays the default backend, with its own devices). An explicit
  `XLA_FLAGS=--xla_force_host_platform_device_count=N` is left alone and wins.

  Returns:
    the number of CPU devices JAX will have.
  Raises:
    InvjaxError: for `num_devices < 1`, or when JAX's backends already started.
  """
  forced = _DEVICE_COUNT_FLAG.search(os.environ.get("XLA_FLAGS", ""))
  if forced:
    return int(forced.group(1))
  n = available_cores() if num_devices is None else int(num_devices)
  if n < 1:
    raise InvjaxError(f"cpu_cores_as_devices: num_devices must be >= 1, got {num_devices}")
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError as e:
    raise InvjaxError(
        "cpu_cores_as_devices() must run before the first JAX operation (JAX's backends have "
        f"already started with {jax.local_device_count()} device(s)): call it right after "
        "`import jax`, e.g. at the top of your launch script's main") from e
  return n


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


def maybe_data_mesh(data_parallel: bool | str = "auto") -> Optional[Mesh]:
  """A data-parallel mesh over the local devices: always (True), never (False), or "auto"
  (when there are several)."""
  if data_parallel is True or (data_parallel == "auto" and jax.local_device_count() > 1):
    return data_mesh()
  return None


def replicate(tree: Any, mesh: Mesh) -> Any:
  """A copy of `tree` (e.g. a `TrainState`) with every array on all mesh devices."""
  return jax.device_put(tree, replicated_sharding(mesh))


def call_sharded(fn: Callable[..., Any], *batch: Any, mesh: Optional[Mesh] = None,
                 **kwargs: Any) -> Any:
  """`fn(*batch, **kwargs)` with the batch split over the mesh's "data" axis.

  Every array in `batch` (positional arguments, pytrees allowed) shares its leading
  (example) axis of size n; they are padded to a multiple of the device count by
  repeating the last example, placed with `shard_batch`, and every output leaf whose
  leading axis has the padded size is cut back to n (others, e.g. scalar counters, are
  returned as they are). `kwargs` (keys, budgets, ...) are passed unchanged; arrays that
  are committed to one device (e.g. restored from a checkpoint) must first be put on every
  device with `replicate`, else a clear error says so. Meant for
  per-example computations such as attacks, where a padded copy of an example does not
  change the others; JIT-compiled `fn`s follow the placement of their inputs.

  With `mesh=None` a mesh over all local devices is used; with one device this is
  just `fn(*batch, **kwargs)`.
  """
  mesh = data_mesh() if mesh is None else mesh
  leaves = jax.tree_util.tree_leaves(batch)
  if not leaves:
    raise InvjaxError("call_sharded: give at least one batch array")
  sizes = {int(np.shape(leaf)[0]) if np.ndim(leaf) else -1 for leaf in leaves}
  if len(sizes) != 1 or -1 in sizes:
    raise InvjaxError(f"call_sharded: every batch array needs the same leading axis, got "
                      f"sizes {sorted(sizes)}")
  n = sizes.pop()
  devices = num_data_shards(mesh)
  if devices == 1 or n == 0:
    return fn(*batch, **kwargs)
  padded = -(-n // devices) * devices

  def pad(x):
    x = x if isinstance(x, jax.Array) else np.asarray(x)
    if padded == n:
      return x
    lib = jax.numpy if isinstance(x, jax.Array) else np
    return lib.concatenate([x, lib.repeat(x[-1:], padded - n, axis=0)], axis=0)

  try:
    out = fn(*shard_batch(jax.tree.map(pad, batch), mesh), **kwargs)
  except InvjaxError as e:
    if padded == n or str(padded) not in str(e):
      raise
    raise InvjaxError(
        f"{e}\n(call_sharded padded the batch of {n} examples to {padded} for {devices} "
        f"devices: a per-example argument of shape [{n}] must be passed as a batch argument, "
        f"`call_sharded(fn, x, y, epsilon)`, not closed over by fn)") from e
  except ValueError as e:
    if "incompatible devices" not in str(e):
      raise
    raise InvjaxError(
        f"call_sharded: the batch is split over {devices} devices but an array the function "
        "uses besides the batch (e.g. parameters restored from a checkpoint) is committed to "
        "fewer; put it on every device first: `parallel.replicate(tree, mesh)`. JAX said: "
        f"{str(e).splitlines()[0]}") from e
  if padded == n:
    return out
  return jax.tree.map(lambda y: y[:n] if np.ndim(y) and np.shape(y)[0] == padded else y, out)
