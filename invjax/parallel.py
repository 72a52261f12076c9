"""Data parallelism with `jax.sharding`: one mesh axis "data" over every process's devices.

The train state is replicated on every device, each batch is split along its
leading axis, and the unchanged jitted step (`invjax.train.make_train_step`)
runs data-parallel: XLA's SPMD partitioner inserts the gradient all-reduce. The
same code runs on 1 CPU, on N fake CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=N`), on GPUs, on a TPU host, and on
several hosts (a TPU pod slice, a GPU cluster: one JAX process per host, connected by
`jax.distributed.initialize`, see `invjax._src.process` and `launch/runtime.py`).

  mesh = global_data_mesh()                 # jax.devices(): all processes' devices
  state = replicate(state, mesh)
  rows = process_rows(batch_size, mesh)     # this process's rows of each global batch
  state, metrics = train_step(state, global_batch(local_rows_of_batch, mesh, batch_size))

Global and local. `global_data_mesh` (also `data_mesh`, `maybe_data_mesh`) spans
`jax.devices()`; `local_data_mesh` spans this process's `jax.local_devices()`, for work each
process does on its own (`call_sharded`: per-example attacks). With one process the two are
the same mesh. In a multi-process run each process loads only `process_rows(...)` of every
global batch and `global_batch` assembles the global array
(`jax.make_array_from_process_local_data`); the global batch, hence the training, is the same
for any number of processes (1 process x 2 devices trains like 2 processes x 1 device, up to
the summation order of the all-reduce). `shard_batch` still takes a whole batch (every process
holding all of it) and `to_host` brings a global array back to every process. Work shared
out by whole items on the host (passeurs' batches, an attack's chunks) uses
`process_block` (this process's contiguous items) and `gather_blocks` (every process's rows
back on every process, in order).

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


def _mesh(devices: Sequence[jax.Device], name: str) -> Mesh:
  devices = list(devices)
  if not devices:
    raise InvjaxError(f"{name}: no devices given")
  return Mesh(np.asarray(devices, dtype=object), (DATA_AXIS,))


def global_data_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh with axis "data" over `devices` (default: `jax.devices()`, every process's).

  The devices are ordered by (process, id), so that each process's devices hold one
  contiguous block of rows of a batch (`process_rows`).
  """
  devices = jax.devices() if devices is None else devices
  return _mesh(sorted(devices, key=lambda d: (d.process_index, d.id)), "global_data_mesh")


def local_data_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh with axis "data" over this process's devices (default: `jax.local_devices()`)."""
  return _mesh(jax.local_devices() if devices is None else devices, "local_data_mesh")


data_mesh = global_data_mesh  # the name single-process code uses; the same mesh there


def num_data_shards(mesh: Mesh) -> int:
  """Devices along "data" (all processes' for a global mesh)."""
  return int(mesh.shape[DATA_AXIS])


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over "data", other axes whole."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "batch_size") -> None:
  """Raises unless `batch_size` is a positive multiple of the mesh's (global) device count."""
  n = num_data_shards(mesh)
  if batch_size <= 0 or batch_size % n:
    procs = len({d.process_index for d in mesh.devices.flat})
    where = f" over {procs} processes" if procs > 1 else ""
    raise InvjaxError(
        f"{name} ({batch_size}) must be a positive multiple of the number of devices "
        f"({n}{where}) for data parallelism; use e.g. {max(n, (batch_size // n) * n)}")


def process_rows(batch_size: int, mesh: Mesh) -> slice:
  """The rows `[start, stop)` of a global batch of `batch_size` that this process loads.

  Read from the batch sharding itself (the rows of this process's devices), so they are the
  rows `global_batch` / `jax.make_array_from_process_local_data` expect from it. A process
  with no device in `mesh` gets an empty slice.
  """
  check_batch_size(batch_size, mesh)
  index_map = batch_sharding(mesh).addressable_devices_indices_map((int(batch_size),))
  starts = sorted({idx[0].indices(batch_size)[:2] for idx in index_map.values()})
  if not starts:
    return slice(0, 0)
  lo, hi = starts[0][0], starts[-1][1]
  if sum(b - a for a, b in starts) != hi - lo:
    raise InvjaxError("process_rows: this process's devices do not hold one contiguous block "
                      "of the batch; build the mesh with global_data_mesh()")
  return slice(lo, hi)


def global_batch(local_batch: Any, mesh: Mesh, batch_size: int) -> Any:
  """Global arrays of `batch_size` rows from this process's `process_rows` of every array.

  `jax.make_array_from_process_local_data` with the batch sharding; in one process this is
  the whole batch put on the mesh.
  """
  check_batch_size(batch_size, mesh)
  sharding = batch_sharding(mesh)

  def put(x):
    x = np.asarray(x)
    if x.ndim == 0:
      raise InvjaxError("global_batch: every array needs a leading batch axis, got a scalar")
    return jax.make_array_from_process_local_data(sharding, x, (int(batch_size),) + x.shape[1:])

  return jax.tree.map(put, local_batch)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Puts every array of a whole `batch` (held in full by every process) on the mesh, split
  along its leading axis; each device receives only its own rows."""
  sharding = batch_sharding(mesh)

  def put(x):
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    if np.ndim(x) == 0:
      raise InvjaxError("shard_batch: every array needs a leading batch axis, got a scalar")
    check_batch_size(int(np.shape(x)[0]), mesh, name="batch size (leading axis)")
    if sharding.is_fully_addressable:
      return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

  return jax.tree.map(put, batch)


def maybe_data_mesh(data_parallel: bool | str = "auto") -> Optional[Mesh]:
  """A data-parallel mesh over all processes' devices: always (True), never (False), or
  "auto" (when there are several, `jax.device_count() > 1`)."""
  if data_parallel is True or (data_parallel == "auto" and jax.device_count() > 1):
    return global_data_mesh()
  return None


def replicate(tree: Any, mesh: Mesh) -> Any:
  """A copy of `tree` (e.g. a `TrainState`) with every array on all mesh devices.

  Over several processes every process must pass the same values (e.g. the same seeded
  initialisation); each one puts its host copy on its own devices.
  """
  sharding = replicated_sharding(mesh)
  if sharding.is_fully_addressable:
    return jax.device_put(tree, sharding)

  def put(x):
    host = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

  return jax.tree.map(put, tree)


def to_host(tree: Any) -> Any:
  """numpy copies of every array of `tree` on every process; arrays split over several
  processes are gathered (`multihost_utils.process_allgather`), which all processes call."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(get, tree)


def process_block(num_items: int, *, process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> slice:
  """The contiguous items `[p * n // P, (p + 1) * n // P)` of `num_items` that process `p` of
  `P` takes (default: this process of this run) when whole items (batches, chunks of an
  attack) are shared out; blocks differ in size by at most one, and are empty when
  `num_items < P`."""
  count = jax.process_count() if process_count is None else int(process_count)
  index = jax.process_index() if process_index is None else int(process_index)
  if count < 1 or not 0 <= index < count:
    raise InvjaxError(f"process index {index} out of range for {count} process(es)")
  n = int(num_items)
  if n < 0:
    raise InvjaxError(f"process_block: num_items must be >= 0, got {num_items}")
  return slice(index * n // count, (index + 1) * n // count)


def gather_blocks(local: Any, sizes: Sequence[int]) -> np.ndarray:
  """Every process's block of rows, concatenated in process order, on every process.

  `local`: this process's rows, `[sizes[jax.process_index()], ...]`; `sizes`: the row count
  of every process (known to all). An all-gather (`multihost_utils.process_allgather`, exact
  copies) of the blocks padded to the longest; all processes call it. One process: `local`.
  """
  local = np.asarray(local)
  sizes = [int(s) for s in sizes]
  if len(sizes) != jax.process_count():
    raise InvjaxError(f"gather_blocks: {len(sizes)} sizes for {jax.process_count()} processes")
  if local.shape[:1] != (sizes[jax.process_index()],):
    raise InvjaxError(f"gather_blocks: process {jax.process_index()} holds {local.shape[:1]} "
                      f"rows, its size says {sizes[jax.process_index()]}")
  if len(sizes) == 1:
    return local
  longest = max(max(sizes), 1)
  if len(local) < longest:  # process_allgather needs the same shape on every process
    local = np.concatenate([local, np.zeros((longest - len(local),) + local.shape[1:],
                                            local.dtype)])
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  stacked = np.asarray(multihost_utils.process_allgather(local, tiled=False))
  return np.concatenate([stacked[p, :size] for p, size in enumerate(sizes)])


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

  With `mesh=None` a mesh over this process's devices (`local_data_mesh`) is used: in a
  multi-process run each process computes its own batch. With one device this is just
  `fn(*batch, **kwargs)`.
  """
  mesh = local_data_mesh() if mesh is None else mesh
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
