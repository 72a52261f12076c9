"""What every launch script sets up before `app.run`: JAX's options as flags, quiet checkpoint logs.

`configure()`:
  * `jax.config.config_with_absl()` (as the flax examples do): every JAX option is a flag of
    the script, e.g. `--jax_compilation_cache_dir=DIR` (compiled programs kept on disk for
    the next or a resumed run), `--jax_platforms=cpu`, `--jax_enable_x64`; `--helpfull` lists
    them.
  * `invjax._src.logs.quiet_library_logs()`: orbax's INFO records (dozens per checkpoint save or
    restore) are dropped from the absl log unless the run asks for verbose logs (`-v 1`), so
    the script's own progress lines stay readable; warnings and errors always pass.
"""
from __future__ import annotations

from absl import flags
import jax

from invjax._src import logs


def configure() -> None:
  """Call in a launch script's `if __name__ == "__main__":`, before `app.run` (idempotent)."""
  if "jax_platforms" not in flags.FLAGS:
    jax.config.config_with_absl()
  logs.quiet_library_logs()
