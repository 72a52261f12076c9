"""Multi-process runs (`jax.distributed`): start-up with clear errors, "is this process 0?".

A TPU pod slice or a GPU cluster runs one JAX process per host; `jax.distributed.initialize`
connects them (JAX's own multi-controller runtime) so that `jax.devices()` lists every
process's devices and one jitted step runs on all of them. Everything an invjax run writes
(metrics, checkpoints' metadata, result files, figures) and its progress bars come from
process 0 only (`is_main_process`); orbax's checkpoints are written by all processes together.

`initialize` is the one place the processes are connected. It checks the set-up first, so a
mistake is an `InvjaxError` naming it, not a hang or an abort inside JAX's C++ runtime (which
ends the process on a connection timeout, without a Python exception to catch):

  * `process_id` outside `0..num_processes - 1`, `num_processes < 1`, a partial set of the
    three explicit arguments;
  * a coordinator that never answers: every process but 0 first waits (up to `timeout` s) for
    a TCP connection to `coordinator_address`, and fails naming the address.
"""
from __future__ import annotations

import socket
import time
from typing import Optional, Tuple

from absl import logging
import jax

from invjax._src.checks import InvjaxError

DEFAULT_TIMEOUT_S = 300  # jax.distributed.initialize's own default initialization_timeout


def is_multiprocess() -> bool:
  """Whether `jax.distributed` connected this process to others (never starts a backend)."""
  return jax.distributed.is_initialized() and jax.process_count() > 1


def is_main_process() -> bool:
  """True in a single-process run and in process 0 of a multi-process one.

  Does not start JAX's backends when `jax.distributed` was not initialised, so it is safe
  to call before the first JAX operation.
  """
  return not jax.distributed.is_initialized() or jax.process_index() == 0


def sync(name: str) -> None:
  """A barrier across processes (`multihost_utils.sync_global_devices`); a no-op in one."""
  if is_multiprocess():
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def split_address(address: str) -> Tuple[str, int]:
  """("host", port) of "host:port" or "[v6 host]:port"; InvjaxError otherwise."""
  host, sep, port = str(address).rpartition(":")
  if not sep or not host or not port.isdigit():
    raise InvjaxError(f"coordinator_address must be host:port (e.g. 10.0.0.2:1234), got "
                      f"{address!r}")
  return host.strip("[]"), int(port)


def wait_for_coordinator(address: str, timeout_s: float) -> float:
  """Waits until `address` accepts a TCP connection; returns the seconds waited.

  Raises:
    InvjaxError: naming the address, when nothing answers within `timeout_s` seconds.
  """
  host, port = split_address(address)
  t0 = time.monotonic()
  last = None
  while True:
    try:
      with socket.create_connection((host, port), timeout=1.0):
        return time.monotonic() - t0
    except OSError as e:
      last = e
    if time.monotonic() - t0 >= timeout_s:
      raise InvjaxError(
          f"the JAX coordinator at {address} did not answer within {timeout_s:g} s "
          f"({type(last).__name__}: {last}); start process 0 (which hosts it) with the same "
          "--coordinator_address, check the host and port, or raise --initialization_timeout")
    time.sleep(0.2)


def check_setup(coordinator_address: Optional[str], num_processes: Optional[int],
                process_id: Optional[int]) -> bool:
  """Validates explicit `jax.distributed` arguments; True when they ask for several processes.

  All three unset: False (a single process, or JAX's cluster auto-detection). Otherwise all
  three are needed, with `num_processes >= 1` and `0 <= process_id < num_processes`.
  """
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
           "process_id": process_id}
  if all(v is None for v in given.values()):
    return False
  missing = sorted(k for k, v in given.items() if v is None)
  if missing:
    raise InvjaxError(f"a multi-process run needs --coordinator_address, --num_processes and "
                      f"--process_id together; missing: {', '.join('--' + m for m in missing)}")
  if int(num_processes) < 1:
    raise InvjaxError(f"num_processes must be >= 1, got {num_processes}")
  if not 0 <= int(process_id) < int(num_processes):
    raise InvjaxError(f"process_id {process_id} is out of range for {num_processes} "
                      f"process(es): it must be in 0..{int(num_processes) - 1}")
  split_address(coordinator_address)
  return True


def initialize(*, coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None, process_id: Optional[int] = None,
               auto: bool = False, timeout_s: int = DEFAULT_TIMEOUT_S) -> bool:
  """Connects this process to the others with `jax.distributed.initialize`, if asked.

  Must run before the first JAX operation. Explicit arguments (GPU clusters, CPU) are
  validated by `check_setup`; processes other than 0 wait for the coordinator first
  (`wait_for_coordinator`). `auto=True` without arguments calls
  `jax.distributed.initialize()` with none, JAX's detection of Cloud TPU pod slices,
  SLURM, Open MPI and Kubernetes. Nothing given: a single process, nothing is done.

  Args:
    coordinator_address: "host:port" of process 0.
    num_processes: how many processes take part.
    process_id: this process's index.
    auto: initialise from the cluster's environment when no address is given.
    timeout_s: `initialization_timeout` (s) for JAX, and the wait for the coordinator.

  Returns:
    whether `jax.distributed` was initialised.
  """
  if timeout_s is None or int(timeout_s) < 1:
    raise InvjaxError(f"initialization timeout must be >= 1 s, got {timeout_s}")
  timeout_s = int(timeout_s)
  explicit = check_setup(coordinator_address, num_processes, process_id)
  if not explicit and not auto:
    return False
  if jax.distributed.is_initialized():
    return True
  if not explicit:
    try:
      jax.distributed.initialize(initialization_timeout=timeout_s)
    except (ValueError, RuntimeError) as e:
      raise InvjaxError(
          "jax.distributed.initialize() found no cluster to join (it detects Cloud TPU pod "
          "slices, SLURM and Open MPI); give --coordinator_address, --num_processes and "
          f"--process_id. JAX said: {e}") from e
    return True
  waited = 0.0
  if int(process_id) != 0:
    waited = wait_for_coordinator(coordinator_address, timeout_s)
  logging.info("process %d of %d: connecting to the JAX coordinator at %s (timeout %d s)",
               process_id, num_processes, coordinator_address, timeout_s)
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=int(num_processes), process_id=int(process_id),
                               initialization_timeout=max(1, int(timeout_s - waited)))
  except (ValueError, RuntimeError) as e:
    raise InvjaxError(f"could not join the JAX coordinator at {coordinator_address} as process "
                      f"{process_id} of {num_processes}: {e}") from e
  return True


def describe() -> str:
  """One line, `process i of n: l local device(s), g in all (platform)`; starts JAX's
  backends."""
  return (f"process {jax.process_index()} of {jax.process_count()}: "
          f"{jax.local_device_count()} local device(s), {jax.device_count()} in all "
          f"({jax.default_backend()})")
