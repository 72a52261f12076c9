"""Atomic outputs: every result file is written to a temporary name, then renamed.

A killed run therefore leaves either the previous file or the new one, never half of one.
`atomic_path(path)` is the one mechanism; the writers below (text, JSON, figures, `.npy`,
`.npz`) go through it, and so does any other file writer in invjax.

In a multi-process run (`jax.distributed`, `invjax._src.process`) the writers below write once,
from process 0, into the run's one shared directory; on the other processes they return
without writing (each would otherwise write the same file).
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator

import numpy as np

from invjax._src import process


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path beside `path` (same extension) that replaces `path` on success.

  The parent directory is created; on an exception the temporary file is removed and `path`
  is left as it was.
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  root, ext = os.path.splitext(path)
  tmp = f"{root}.tmp{ext}"
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` atomically."""
  if not process.is_main_process():
    return
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    f.write(text)


def write_json(path: str, obj: Any, *, indent: int = 1) -> None:
  """Writes `obj` as JSON to `path` atomically (non-JSON values through `str`)."""
  write_text(path, json.dumps(obj, indent=indent, default=str))


def save_figure(fig, path: str, *, dpi: int = 120) -> None:
  """Saves a matplotlib figure to `path` atomically and closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  if not process.is_main_process():
    plt.close(fig)
    return
  with atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=dpi)
  plt.close(fig)


def save_npy(path: str, array: np.ndarray) -> None:
  """Saves one array as `.npy` atomically."""
  if not process.is_main_process():
    return
  with atomic_path(path) as tmp, open(tmp, "wb") as f:
    np.save(f, array)


def save_npz(path: str, **arrays: np.ndarray) -> None:
  """Saves arrays as a compressed `.npz` atomically."""
  if not process.is_main_process():
    return
  with atomic_path(path) as tmp, open(tmp, "wb") as f:
    np.savez_compressed(f, **arrays)
