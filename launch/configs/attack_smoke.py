"""Alias of `attack.py:smoke` (see attack.py for the commands)."""
from launch.configs import attack


def get_config():
  return attack.get_config("smoke")
