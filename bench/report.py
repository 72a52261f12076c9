"""Shared ending of the bench scripts: print the markdown report and optionally save it."""
from __future__ import annotations

from typing import Optional


def emit(text: str, out: Optional[str]) -> None:
  """Prints `text` and, when `out` is a path, writes it there too."""
  print(text)
  if out:
    with open(out, "w") as f:
      f.write(text)
