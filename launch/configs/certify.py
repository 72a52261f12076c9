r"""Certifying a trained invertible classifier: Lipschitz certificates and randomized smoothing.

  python -m launch.certify --config=launch/configs/certify.py:smoke --workdir=/tmp/certify_smoke

  python -m launch.train_classifier --config=launch/configs/classifier.py:cpu,model=certified \
      --workdir=runs/clf_certified_cpu --data_dir=../shared/data/cifar10
  python -m launch.certify --config=launch/configs/certify.py \
      --config.checkpoint_dir=runs/clf_certified_cpu --workdir=runs/certify_cpu \
      --data_dir=../shared/data/cifar10

`smoke`: trains `classifier.py:smoke,model=certified` (a certified i-ResNet with the
Lipschitz-margin loss, 150 steps on the embedded mini CIFAR-10) into `<workdir>/classifier`
(reused on a rerun), then certifies the first 100 test images: the Lipschitz certificate with
its check by attack (PGD-L2, 5 restarts, at 0.99x and 3x each certified radius), and
randomized smoothing with sigma 0.25 and N = 2,000 samples (a plumbing check: the published
protocol takes N = 100,000). Certified accuracy at the l2 radii 36/255, 72/255, 108/255, 0.25
and 0.5.

Default: a finished classifier in `config.checkpoint_dir` (e.g. `classifier.py:cpu,model=
certified`), the first 500 test images, smoothing with N0 = 100, N = 100,000, alpha = 0.001
(Cohen et al. 2019), and the attack check on 100 certified images.
"""
import ml_collections

from launch.configs import parse_arg

RADII = (36 / 255, 72 / 255, 108 / 255, 0.25, 0.5)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  arg = parse_arg(arg, smoke=False)
  config = ml_collections.ConfigDict(dict(
      seed=0, radii=RADII, methods=("lipschitz", "smoothing"),
      checkpoint_dir="",  # "": <workdir>/classifier, trained there first when `train` is set
      train="",  # a classifier.py argument trained into <workdir>/classifier if it is missing
      sigma=0.25, num_selection=100, num_samples=100_000, alpha=0.001, batch_size=1000,
      attack_examples=100, attack_fraction=0.99, attack_steps=50, attack_restarts=5,
      dataset="cifar10", num_examples=500, progress=False))
  if arg.smoke:
    config.update(dict(dataset="cifar10_mini", train="smoke,model=certified", num_examples=100,
                       num_samples=2_000, batch_size=500, attack_examples=50,
                       attack_steps=20))
  return config
