"""What every launch script sets up before `app.run`: JAX's options as flags, quiet logs, the
common flags (`--config`, `--workdir`, `--data_dir`).

`configure()`:
  * `jax.config.config_with_absl()` (as the flax examples do): every JAX option is a flag of
    the script, e.g. `--jax_compilation_cache_dir=DIR` (compiled programs kept on disk for
    the next or a resumed run), `--jax_platforms=cpu`, `--jax_enable_x64`; `--helpfull` lists
    them.
  * `invjax._src.logs.quiet_library_logs()`: orbax's INFO records (dozens per checkpoint save
    or restore) are dropped from the absl log unless the run asks for verbose logs (`-v 1`),
    so the script's own progress lines stay readable; warnings and errors always pass.
"""
from __future__ import annotations

import os

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from invjax._src import logs

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def configure() -> None:
  """Call in a launch script's `if __name__ == "__main__":`, before `app.run` (idempotent)."""
  if "jax_platforms" not in flags.FLAGS:
    jax.config.config_with_absl()
  logs.quiet_library_logs()


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
  """First line of a script's `main`: refuses stray arguments and applies `--cpu_devices`
  (when the script defines it) before JAX starts."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  num = flags.FLAGS["cpu_devices"].value if "cpu_devices" in flags.FLAGS else 0
  if num:
    from invjax import parallel  # pylint: disable=g-import-not-at-top
    parallel.cpu_cores_as_devices(None if num < 0 else num)
