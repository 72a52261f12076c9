"""Alias of `flow.py:model=...` (see flow.py for the commands)."""
from launch.configs import flow


def get_config(model: str = "glow"):
  return flow.get_config(f"model={model}")
