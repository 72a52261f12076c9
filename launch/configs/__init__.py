"""ml_collections experiment configs; each docstring holds its exact launch commands.

One file per experiment with `get_config(arg)` (big_vision style): `--config=FILE.py:ARG`
where ARG is a comma-separated list of `key=value` or bare flags, e.g. `flow.py:smoke`,
`flow.py:smoke,model=iresnet`, `flow.py:model=glow`. `smoke` is the small run on the
embedded mini CIFAR-10 that the tests run end to end; without it, the full-size run.
The older file names (`flow_smoke.py`, `flow_cifar10.py`, ...) are one-line aliases.
"""
from __future__ import annotations

from typing import Any

import ml_collections


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """`"smoke,model=iresnet"` -> ConfigDict(smoke=True, model="iresnet") over `defaults`.

  A bare word sets that key to True; `key=value` sets it to `value` (converted to the type
  of its default when that is a bool, int or float). Unknown keys raise `ValueError`.
  """
  out = dict(defaults)
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    key, sep, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; expected some of {sorted(defaults)}")
    default = defaults[key]
    if not sep:
      out[key] = True
    elif isinstance(default, bool):
      out[key] = value.lower() in ("1", "true", "yes")
    elif isinstance(default, (int, float)):
      out[key] = type(default)(value)
    else:
      out[key] = value
  return ml_collections.ConfigDict(out)


def choose(name: str, options: dict, key: str) -> Any:
  """`options[key]`, or a `ValueError` listing the choices of `name`."""
  if key not in options:
    raise ValueError(f"{name} must be one of {sorted(options)}, got {key!r}")
  return options[key]
