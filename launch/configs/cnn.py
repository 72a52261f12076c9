r"""A CIFAR-10 CNN baseline: the Parseval residual CNN, plain or with the Parseval constraints.

  python -m launch.train_cnn --config=launch/configs/cnn.py:smoke --workdir=/tmp/cnn_smoke
  python -m launch.train_cnn --config=launch/configs/cnn.py:smoke,parseval \
      --workdir=/tmp/cnn_smoke_parseval
  python -m launch.train_cnn --config=launch/configs/cnn.py:cpu,parseval \
      --workdir=runs/cnn_cifar10_cpu_parseval --data_dir=../shared/data/cifar10
  python -m launch.train_cnn --config=launch/configs/cnn.py:parseval \
      --workdir=runs/cnn_cifar10_parseval --data_dir=../shared/data/cifar10

The model is `invjax.nets.parseval_cnn.ParsevalCNN` (residual blocks with convex
aggregation, no batch norm, orthogonal initialisation) in every variant; `parseval` chains
`invjax.robust.parseval.parseval_retraction` (`config.retraction`: beta 1/2, the
Newton-Schulz step, on every row) after the optimiser, which keeps each convolution and the
head 1-Lipschitz and the aggregation weights on the simplex. Without `parseval` the same
network trains unconstrained: plain and Parseval runs differ in the retraction only.
`noise` trains on `x + 0.25 N(0, I)` (Gaussian noise augmentation, Cohen et al. 2019): the
base classifier of randomized smoothing at sigma 0.25 (`launch/certify.py`).
`results.json` holds the test accuracy and the largest / smallest singular value of the
constrained matrices (`layer_singular_values`).

`smoke`: the embedded mini CIFAR-10 (1,000 train / 500 test), widths 16-32-64, 400 steps of
batch 64; a few minutes on a CPU. A plumbing check, not a result.

`cpu`: all 50,000 CIFAR-10 training images on a CPU, widths 32-64-128, the budget of the
invertible student of `distill.py:cpu` (4,000 steps of batch 128, about 10 epochs).

Default (no argument): full size for a GPU/TPU (widths 64-128-256, 2 blocks per stage,
40,000 steps of batch 128 with flips and crops); NOT run inside invjax. The paper's
CIFAR-10 models are much larger wide ResNets (28-10) with batch norm, so their accuracies
are not targets for this network.
"""
import ml_collections

from launch.configs import parse_arg


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  arg = parse_arg(arg, smoke=False, cpu=False, parseval=False, noise=False)
  config = ml_collections.ConfigDict(dict(
      num_train=0, num_test=0, num_classes=10, seed=0,  # num_train / num_test 0: all
      final_lr_fraction=0.0, data_parallel="auto", progress=True,
      parseval=bool(arg.parseval),
      noise_sigma=0.25 if arg.noise else 0.0,  # Gaussian noise on training inputs
      retraction=dict(beta=0.5, row_fraction=1.0)))  # read only with parseval
  if arg.smoke:
    config.update(dict(
        dataset="cifar10_mini", model=dict(widths=(16, 32, 64), blocks=1, logit_scale=1.0),
        augment=True,
        num_steps=400, batch_size=64, learning_rate=3e-3, warmup_steps=20, grad_clip=5.0,
        weight_decay=0.0, log_every=50, checkpoint_every=200, max_to_keep=1, eval_every=0,
        eval_batch_size=250))
  elif arg.cpu:
    config.update(dict(
        dataset="cifar10", model=dict(widths=(32, 64, 128), blocks=1, logit_scale=1.0),
        augment=True,
        num_steps=4_000, batch_size=128, learning_rate=3e-3, warmup_steps=100, grad_clip=5.0,
        weight_decay=0.0, log_every=100, checkpoint_every=500, max_to_keep=2,
        eval_every=1_000, eval_batch_size=500))
  else:
    config.update(dict(
        dataset="cifar10", model=dict(widths=(64, 128, 256), blocks=2, logit_scale=1.0),
        augment=True,
        num_steps=40_000, batch_size=128, learning_rate=2e-3, warmup_steps=1_000,
        grad_clip=5.0, weight_decay=0.0, log_every=200, checkpoint_every=2_000,
        max_to_keep=2, eval_every=4_000, eval_batch_size=500))
  return config
