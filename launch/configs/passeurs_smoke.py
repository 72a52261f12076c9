r"""Passeurs smoke run: `launch/configs/passeurs.py:smoke` (the embedded mini CIFAR-10).

  python -m launch.passeurs --config=launch/configs/passeurs_smoke.py --workdir=/tmp/passeurs_smoke
"""
from launch.configs.passeurs import get_config as _get_config

get_config = lambda: _get_config("smoke")  # pylint: disable=unnecessary-lambda-assignment
