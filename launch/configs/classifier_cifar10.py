"""Alias of `classifier.py:model=...` (see classifier.py for the commands)."""
from launch.configs import classifier


def get_config(model: str = "iresnet"):
  return classifier.get_config(f"model={model}")
