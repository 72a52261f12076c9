r"""Attacks a trained CIFAR-10 invertible classifier (a workdir of launch/train_classifier.py).

  python -m launch.train_classifier --config=launch/configs/classifier_cifar10.py:iresnet \
      --workdir=runs/clf_iresnet --data_dir=../shared/data/cifar10
  python -m launch.attack --config=launch/configs/attack_cifar10.py:iresnet \
      --config.checkpoint_dir=runs/clf_iresnet --workdir=runs/attack_iresnet \
      --data_dir=../shared/data/cifar10

The model fields (`model`, `head`, `slice_dims`, `num_classes`, `dataset`) are copied
from `launch/configs/classifier_cifar10.py:<model>` (iresnet, irevnet or glow), so
they match the checkpoint. Attacks the correctly classified images among the first
1,000 test images, L_inf budgets 1/255 ... 16/255, PGD-40, CW-L2 (5 x 200 steps),
the latent attacks and the invariance attack; writes the success-vs-epsilon table,
curves and image grids in `--workdir`.
"""
import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from launch.configs import classifier_cifar10  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(model: str = "iresnet") -> ml_collections.ConfigDict:
  trained = classifier_cifar10.get_config(model)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.dataset = trained.dataset
  config.num_classes = trained.num_classes
  config.model = ml_collections.ConfigDict(trained.model.to_dict())
  config.head = trained.head
  config.slice_dims = trained.get("slice_dims", None)
  config.input_offset = -0.5  # train_classifier feeds x - 0.5
  config.checkpoint_dir = ""  # required: the train_classifier workdir
  config.train_steps = 0  # never trains: needs a checkpoint
  config.batch_size = 64
  config.learning_rate = 1e-3
  config.nll_weight = 0.0
  config.attacks = ("fgsm", "pgd", "cw", "latent_closed_form", "latent_jacobian",
                    "latent_jacobian_linear", "latent_optimize", "invariance")
  config.num_examples = 1000
  config.norm = "linf"
  config.epsilons = (1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255)
  config.pgd_steps = 40
  config.cw_steps = 200
  config.cw_search_steps = 5
  config.latent_iters = 5
  config.latent_candidates = 3  # top-3 classes per Jacobian-aware step (0: all)
  config.latent_opt_steps = 50
  return config
