"""Quiet third-party INFO logs (orbax writes dozens of lines per checkpoint) under absl."""
from __future__ import annotations

import logging as logging_std
import os
from typing import Sequence

from absl import logging


class _BelowWarningFrom(logging_std.Filter):
  """Drops records below WARNING from files under one of `prefixes`, unless absl's verbosity
  is 1 or more (`-v 1`)."""

  def __init__(self, prefixes):
    super().__init__()
    self.prefixes = tuple(prefixes)

  def filter(self, record):
    return (record.levelno >= logging_std.WARNING or logging.get_verbosity() >= 1
            or not any(p in (record.pathname or "") for p in self.prefixes))


def library_log_filter(prefixes: Sequence[str] = ("orbax",)) -> logging_std.Filter:
  """The filter `quiet_library_logs` installs: records below WARNING from files under a
  `<sep><prefix><sep>` directory are dropped (kept at absl verbosity >= 1)."""
  return _BelowWarningFrom([os.sep + p + os.sep for p in prefixes])


def quiet_library_logs(prefixes: Sequence[str] = ("orbax",)) -> None:
  """Hides INFO logs of orbax (dozens of lines per checkpoint save or restore) from absl's
  handler, so a run's own progress lines stay readable.

  Meant for launch scripts (`launch.runtime.configure` calls it); keeps warnings and errors,
  and everything when the run asks for verbose logs (`-v 1` or more).
  """
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _BelowWarningFrom) for f in handler.filters):
    handler.addFilter(library_log_filter(prefixes))
