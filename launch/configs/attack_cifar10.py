"""Alias of `attack.py:model=...` (see attack.py for the commands)."""
from launch.configs import attack


def get_config(model: str = "iresnet"):
  return attack.get_config(f"model={model}")
