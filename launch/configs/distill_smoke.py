"""Alias of `distill.py:smoke` (see distill.py for the commands)."""
from launch.configs import distill


def get_config():
  return distill.get_config("smoke")
