r"""Passeurs on full CIFAR-10: `launch/configs/passeurs.py` (its docstring has the results).

  python -m launch.passeurs --config=launch/configs/passeurs_cifar10.py \
    --data_dir=../shared/data/cifar10 --workdir=runs/passeurs_cifar10
"""
from launch.configs.passeurs import get_config as _get_config

get_config = lambda: _get_config("")  # pylint: disable=unnecessary-lambda-assignment
