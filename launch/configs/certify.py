r"""Certifying trained classifiers: Lipschitz certificates and randomized smoothing, one table.

  python -m launch.certify --config=launch/configs/certify.py:smoke --workdir=/tmp/certify_smoke
  python -m launch.certify --config=launch/configs/certify.py:cpu --workdir=runs/certify_cpu \
      --data_dir=../shared/data/cifar10
  python -m launch.certify --config=launch/configs/certify.py \
      --config.models.certified.checkpoint_dir=runs/clf_certified \
      --config.models.parseval.checkpoint_dir=runs/cnn_parseval \
      --config.models.noise.checkpoint_dir=runs/cnn_noise --workdir=runs/certify \
      --data_dir=../shared/data/cifar10

Three models, each certified on the same test images at the l2 radii 36/255, 72/255,
108/255, 0.25 and 0.5 (the table of RobustBench-style papers):

* `certified`: a certified invertible classifier (`classifier.py:...,model=certified`: a
  `lipschitz_resnet` i-ResNet trained with the Lipschitz-margin loss); the Lipschitz
  certificate (checked by attack: PGD-L2, 5 restarts, at 0.99x and 3x each certified radius)
  and randomized smoothing of the same network;
* `parseval`: the Parseval CNN (`cnn.py:...,parseval`); its Lipschitz certificate
  (`invjax.robust.cnn_certificates`, from the trained weights) and smoothing;
* `noise`: the same CNN trained unconstrained on Gaussian noise (`cnn.py:...,noise`,
  sigma 0.25): randomized smoothing's base classifier (Cohen et al. 2019), smoothing only.

A model's `checkpoint_dir` ("": `<workdir>/<name>`) holds its training run; with `train` (a
`classifier.py` or `cnn.py` argument, by `kind`) and no checkpoint there, it is trained there
first (reused on a rerun).

`smoke`: the embedded mini CIFAR-10; the three smoke trainings (150 steps for the certified
classifier, 400 for each CNN), the first 100 test images, smoothing with N = 2,000 (a
plumbing check). `cpu`: full CIFAR-10, the `cpu` trainings (4,000 steps of batch 128 each),
500 test images, smoothing with N = 10,000 (N = 100,000 on 500 images is hours on 2 cores;
N = 10,000 caps the smoothing radius at sigma * Phi^-1(0.001^(1/10^4)) = 0.79). NOT run to
completion inside invjax yet. Default: finished runs in the three `checkpoint_dir`s (e.g. the
full-size GPU configs), 500 images, N0 = 100, N = 100,000, alpha = 0.001 (Cohen et al.).
Anchors (published, GPU, large models) at 36/255: LiResNet 78.1%, AOL-MLP 77.6% (with
generated data), SLL X-Large about 66%.
"""
import ml_collections

from launch.configs import parse_arg

RADII = (36 / 255, 72 / 255, 108 / 255, 0.25, 0.5)
KINDS = ("classifier", "cnn")


def _models(certified: str, cnn: str) -> dict:
  """The three models; `certified` / `cnn`: the training arguments' prefix ("": no training)."""
  arg = lambda prefix, rest: f"{prefix},{rest}" if prefix else ""
  both = ("lipschitz", "smoothing")
  return dict(
      certified=dict(kind="classifier", checkpoint_dir="", methods=both,
                     train=arg(certified, "model=certified")),
      parseval=dict(kind="cnn", checkpoint_dir="", methods=both, train=arg(cnn, "parseval")),
      noise=dict(kind="cnn", checkpoint_dir="", methods=("smoothing",), train=arg(cnn, "noise")))


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  arg = parse_arg(arg, smoke=False, cpu=False)
  config = ml_collections.ConfigDict(dict(
      seed=0, radii=RADII, models=_models("", ""),
      sigma=0.25, num_selection=100, num_samples=100_000, alpha=0.001, batch_size=1000,
      attack_examples=100, attack_fraction=0.99, attack_steps=50, attack_restarts=5,
      dataset="cifar10", num_examples=500, progress=False))
  if arg.smoke:
    config.update(dict(dataset="cifar10_mini", models=_models("smoke", "smoke"),
                       num_examples=100, num_samples=2_000, batch_size=500,
                       attack_examples=50, attack_steps=20))
  elif arg.cpu:
    config.update(dict(models=_models("cpu", "cpu"), num_samples=10_000, batch_size=500,
                       progress=True))
  return config
