r"""Invertibility and detection diagnostics of a hybrid (flow + head) invertible classifier.

  python -m launch.diagnose --config=launch/configs/diagnose.py:smoke --workdir=/tmp/diagnose_smoke
  python -m launch.diagnose --config=launch/configs/diagnose.py:cpu --workdir=runs/diagnose_cpu \
      --config.checkpoint_dir=runs/clf_glow_cpu --data_dir=../shared/data/cifar10
  python -m launch.diagnose --config=launch/configs/diagnose.py \
      --config.checkpoint_dir=runs/clf_glow_hybrid --workdir=runs/diagnose \
      --data_dir=../shared/data/cifar10

On the first `num_examples` test images (`invjax.robust.diagnostics.diagnostics_report`):
the invertibility report (reconstruction error `|decode(encode(x)) - x|`, forward / inverse
local Lipschitz lower bounds, non-invertible flags; Behrmann et al. 2021) on the test images,
their PGD images and the OOD inputs of `ood` (uniform noise, constant images, tfds `svhn`
when prepared in `tfds_data_dir`, skipped with its reason otherwise), and the bits/dim
detector against clean, PGD, latent (`latent_method`) and adaptive images (one row per
`adaptive_lambdas` value), the attacks on the correctly classified images, L_inf `epsilon`.

The classifier comes from `checkpoint_dir` ("": `<workdir>/classifier`), a workdir of
`launch/train_classifier.py` with a log-det (Glow: `model=glow`); with `train` (a
`classifier.py` argument) and no checkpoint there, it is trained there first.

`smoke`: the embedded mini CIFAR-10, the smoke hybrid Glow (`classifier.py:smoke,model=glow`,
150 steps) trained into `<workdir>/classifier`, 100 test images, 10 attack steps: a plumbing
check, the classifier is weak. `cpu`: full CIFAR-10, 500 test images, 20 attack steps, a
hybrid Glow trained beforehand in `checkpoint_dir` (default `runs/clf_glow_cpu`; meant for a
`classifier.py:cpu,model=glow` run, a variant launch/configs/classifier.py does not have yet:
its `cpu` mode only has `model=certified`). The `cpu` config has NOT been run. Default: a
full-size run's checkpoint (`classifier.py:model=glow`), 1,000 images, 20 steps.
"""
import ml_collections

from launch.configs import parse_arg


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  arg = parse_arg(arg, smoke=False, cpu=False)
  config = ml_collections.ConfigDict(dict(
      seed=0, dataset="cifar10", num_examples=1000, checkpoint_dir="", train="",
      epsilon=8 / 255, norm="linf", num_steps=20, adaptive_lambdas=(1.0, 10.0),
      latent_method="jacobian", ood=("uniform", "constant", "svhn"), tfds_data_dir="",
      num_iters=20, batch_size=50, fpr=0.05, only_correct=True, progress=False))
  if arg.smoke:
    config.update(dict(dataset="cifar10_mini", num_examples=100, num_steps=10,
                       train="smoke,model=glow"))
  elif arg.cpu:
    config.update(dict(num_examples=500, checkpoint_dir="runs/clf_glow_cpu"))
  return config
