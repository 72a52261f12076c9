"""The library-log filter (invjax.train) every launch script installs (`launch.runtime`).

`launch.runtime.configure` itself is exercised end to end by the launch CLI tests (it turns
JAX's options into absl flags of the process, which an in-process test must not do).
"""
import logging as std_logging
import os

from absl import logging
import pytest

from invjax._src import logs


def _record(level, pathname):
  return std_logging.LogRecord("absl", level, pathname, 1, "msg", None, None)


ORBAX_FILE = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "checkpoint_manager.py")
OTHER_FILE = os.path.join(os.sep, "repo", "launch", "attack.py")


@pytest.fixture
def verbosity():
  old = logging.get_verbosity()
  yield logging.set_verbosity
  logging.set_verbosity(old)


def test_orbax_info_is_dropped_and_everything_else_kept(verbosity):
  verbosity(logging.INFO)
  f = logs.library_log_filter()
  assert not f.filter(_record(std_logging.INFO, ORBAX_FILE))
  assert not f.filter(_record(std_logging.DEBUG, ORBAX_FILE))
  assert f.filter(_record(std_logging.WARNING, ORBAX_FILE))
  assert f.filter(_record(std_logging.ERROR, ORBAX_FILE))
  assert f.filter(_record(std_logging.INFO, OTHER_FILE))


def test_verbose_runs_keep_orbax_info(verbosity):
  verbosity(1)  # -v 1
  assert logs.library_log_filter().filter(_record(std_logging.INFO, ORBAX_FILE))

