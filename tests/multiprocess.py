"""Test helper: launch scripts run as several JAX processes on one machine (CPU, gloo).

`Group` starts subprocesses (`python -m <module> ...` from the repository root, output to one
log file each), connected by `jax.distributed` through a coordinator on 127.0.0.1 at a free
port (`start_processes`), or alone (`start`); `wait` collects their return codes and logs
and kills every one of them when one fails unexpectedly or runs past the timeout. Used by
tests/train/test_multiprocess.py and tests/passeurs/test_multiprocess_passeurs.py.
"""
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 240
GLOO = "--jax_cpu_collectives_implementation=gloo"


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env(num_devices: int):
  """The environment of a CPU subprocess with `num_devices` JAX devices."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  if num_devices > 1:
    flags.append(f"--xla_force_host_platform_device_count={num_devices}")
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags))


def distributed_flags(port: int, num_processes: int, process_id: int):
  """The `launch/runtime.py` flags of process `process_id` of `num_processes`."""
  return [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
          f"--process_id={process_id}"]


class Group:
  """Subprocesses started together, output to files; all are killed if one fails or hangs."""

  def __init__(self, logdir, timeout_s: float = TIMEOUT_S):
    self.logdir, self.timeout_s, self.procs = str(logdir), float(timeout_s), []

  def start(self, name, module, args, *, num_devices=1, dist=None):
    """`python -m module *args --jax_cpu_collectives_implementation=gloo`; `dist`:
    (port, num_processes, process_id) adds the multi-process flags."""
    cmd = [sys.executable, "-m", module] + [str(a) for a in args] + [GLOO]
    if dist is not None:
      cmd += distributed_flags(*dist)
    log = os.path.join(self.logdir, f"{name}.log")
    with open(log, "w") as f:
      proc = subprocess.Popen(cmd, cwd=ROOT, env=env(num_devices), stdout=f,
                              stderr=subprocess.STDOUT)
    self.procs.append((name, proc, log))

  def start_processes(self, name, module, args, num_processes=2):
    """`num_processes` connected processes named name0, name1, ..."""
    port = free_port()
    for pid in range(num_processes):
      self.start(f"{name}{pid}", module, args, dist=(port, num_processes, pid))

  def wait(self, expect_failure=()):
    """{name: (returncode, output)}; kills everything on a timeout or an unexpected failure."""
    deadline, out = time.monotonic() + self.timeout_s, {}
    try:
      for name, proc, log in self.procs:
        try:
          rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
          rc = None
        with open(log) as f:
          out[name] = (rc, f.read())
        if rc is None or (rc != 0) != (name in expect_failure):
          raise AssertionError(f"{name}: returncode {rc}\n{out[name][1][-4000:]}")
    finally:
      for _, proc, _ in self.procs:
        if proc.poll() is None:
          proc.kill()
          proc.wait()
      self.procs = []
    return out
