"""Atomic outputs: every result file is written to a temporary name, then renamed.

A killed run therefore leaves either the previous file or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
from typing import Any


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` atomically."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_json(path: str, obj: Any, *, indent: int = 1) -> None:
  """Writes `obj` as JSON to `path` atomically (non-JSON values through `str`)."""
  write_text(path, json.dumps(obj, indent=indent, default=str))


def save_figure(fig, path: str, *, dpi: int = 120) -> None:
  """Saves a matplotlib figure to `path` atomically and closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  root, ext = os.path.splitext(path)
  tmp = f"{root}.tmp{ext}"
  fig.savefig(tmp, dpi=dpi)
  plt.close(fig)
  os.replace(tmp, path)
