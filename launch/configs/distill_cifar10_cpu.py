"""Alias of `distill.py:cpu` (see distill.py for the commands)."""
from launch.configs import distill


def get_config():
  return distill.get_config("cpu")
