"""Alias of `classifier.py:smoke[,model=...]` (see classifier.py for the commands)."""
from launch.configs import classifier


def get_config(model: str = "irevnet"):
  return classifier.get_config(f"smoke,model={model}")
