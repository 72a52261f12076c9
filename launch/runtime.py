"""What every launch script sets up before `app.run`: JAX's options as flags, quiet logs, the
common flags (`--config`, `--workdir`, `--data_dir`), and several processes (`jax.distributed`).

`configure()`:
  * `jax.config.config_with_absl()` (as the flax examples do): every JAX option is a flag of
    the script, e.g. `--jax_compilation_cache_dir=DIR` (compiled programs kept on disk for
    the next or a resumed run), `--jax_platforms=cpu`, `--jax_enable_x64`; `--helpfull` lists
    them.
  * `invjax._src.logs.quiet_library_logs()`: orbax's INFO records (dozens per checkpoint save
    or restore) are dropped from the absl log unless the run asks for verbose logs (`-v 1`),
    so the script's own progress lines stay readable; warnings and errors always pass.
  * the multi-process flags, the names of `jax.distributed.initialize`'s arguments:
    `--coordinator_address=host:port` (process 0's address), `--num_processes`,
    `--process_id` (GPU clusters, several CPU processes), or `--distributed` alone (Cloud TPU
    pod slices, SLURM, Open MPI: JAX reads the cluster's environment);
    `--initialization_timeout` (s). Without them a script runs as one process, as always.

`start(argv)`, the first line of a script's `main`, connects the processes
(`invjax._src.process.initialize`, before any JAX computation), then every process logs its
index and device counts once, and processes other than 0 log warnings and errors only (their
metrics files, bars and result files are process 0's, see `invjax._src.process`). On CPUs
the processes' collectives go through gloo (`--jax_cpu_collectives_implementation=gloo`,
JAX's default on Linux).
"""
from __future__ import annotations

import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from invjax._src import logs
from invjax._src import process

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def configure() -> None:
  """Call in a launch script's `if __name__ == "__main__":`, before `app.run` (idempotent)."""
  if "jax_platforms" not in flags.FLAGS:
    jax.config.config_with_absl()
  logs.quiet_library_logs()
  if "coordinator_address" not in flags.FLAGS:
    define_distributed_flags()


def define_distributed_flags() -> None:
  """`--coordinator_address`, `--num_processes`, `--process_id`, `--distributed`,
  `--initialization_timeout` (see the module docstring)."""
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0 in a multi-process run (jax.distributed).")
  flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
  flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")
  flags.DEFINE_bool("distributed", False,
                    "Connect the processes of a Cloud TPU pod slice / SLURM / Open MPI job "
                    "from the environment (jax.distributed.initialize() without arguments).")
  flags.DEFINE_integer("initialization_timeout", process.DEFAULT_TIMEOUT_S,
                       "Seconds to wait for the coordinator and the other processes.")


def define_flags(default_config: str, config_help: str = "Experiment config file.",
                 workdir_help: str = "Where metrics, checkpoints and results go.") -> None:
  """`--config` (default: `default_config`, a file under launch/configs, `file.py:arg` allowed),
  `--workdir` (required) and `--data_dir` (a directory of .npz splits)."""
  config_flags.DEFINE_config_file("config", os.path.join(CONFIG_DIR, default_config),
                                  config_help, lock_config=True)
  flags.DEFINE_string("workdir", None, workdir_help)
  flags.DEFINE_string("data_dir", None, "Directory of .npz splits (default: config.dataset).")
  flags.mark_flags_as_required(["workdir"])


def load_splits(config, data_dir: str | None):
  """(train, test) `Dataset`s of `config.dataset` (or `data_dir`), cut to `config.num_train` /
  `config.num_test` images when those are > 0."""
  from invjax import data  # pylint: disable=g-import-not-at-top
  train = data.take_prefix(data.load(config.dataset, "train", data_dir), config.num_train)
  test = data.take_prefix(data.load(config.dataset, "test", data_dir), config.num_test)
  return train, test


def define_cpu_devices_flag(default: int, help_text: str) -> None:
  """`--cpu_devices`: JAX CPU devices for the script (-1: one per core, 0: JAX's default)."""
  flags.DEFINE_integer("cpu_devices", default, help_text)


def start(argv) -> None:
  """First line of a script's `main`: refuses stray arguments, applies `--cpu_devices`
  (when the script defines it) and connects the processes of a multi-process run, before
  JAX starts; logs this process's index and devices."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  num = flags.FLAGS["cpu_devices"].value if "cpu_devices" in flags.FLAGS else 0
  if num:
    from invjax import parallel  # pylint: disable=g-import-not-at-top
    parallel.cpu_cores_as_devices(None if num < 0 else num)
  if "coordinator_address" in flags.FLAGS:
    f = flags.FLAGS
    process.initialize(coordinator_address=f.coordinator_address,
                       num_processes=f.num_processes, process_id=f.process_id,
                       auto=f.distributed, timeout_s=f.initialization_timeout)
  logging.info("%s", process.describe())
  if not process.is_main_process():
    logging.set_verbosity(logging.WARNING)


def echo(text: str) -> None:
  """Prints a launcher's final report, on process 0 only (every process runs the launcher)."""
  if process.is_main_process():
    print(text, flush=True)
