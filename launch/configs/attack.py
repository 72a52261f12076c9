r"""Attacks on an invertible classifier: FGSM, PGD, CW, the latent attacks, the invariance attack.

  python -m launch.attack --config=launch/configs/attack.py:smoke --workdir=/tmp/attack_smoke

  python -m launch.train_classifier --config=launch/configs/classifier.py:model=iresnet \
      --workdir=runs/clf_iresnet --data_dir=../shared/data/cifar10
  python -m launch.attack --config=launch/configs/attack.py:model=iresnet \
      --config.checkpoint_dir=runs/clf_iresnet --workdir=runs/attack_iresnet \
      --data_dir=../shared/data/cifar10

`smoke`: trains a 1-level additive Glow classifier (linear head on the flat latent) for 300
steps on the embedded mini CIFAR-10 (1,000 images) into `<workdir>/classifier` (reused on a
rerun), then attacks the correctly classified images among the first 100 test images with
FGSM, PGD-10, Carlini-Wagner and the three latent attacks, plus the invariance (metameric)
attack. Expect a clean accuracy around 0.3 (it is a plumbing check, not a model) and every
attack near 100% success at the largest epsilon, the latent attacks in a fraction of PGD's
time.

`model=iresnet|irevnet|glow`: a trained CIFAR-10 classifier (a workdir of
launch/train_classifier.py, rebuilt from its model.json; the model fields below are copied
from `classifier.py:model=<model>` for runs without one). Attacks the correctly classified
images among the first 1,000 test images, L_inf budgets 1/255 ... 16/255, PGD-40, CW-L2
(5 x 200 steps), the latent attacks and the invariance attack.
"""
import ml_collections

from launch.configs import classifier
from launch.configs import parse_arg


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  arg = parse_arg(arg, smoke=False, model="iresnet")
  config = ml_collections.ConfigDict(dict(
      seed=0, norm="linf", epsilons=(1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255),
      attacks=("fgsm", "pgd", "cw", "latent_closed_form", "latent_jacobian",
               "latent_jacobian_linear", "latent_optimize", "invariance"),
      latent_candidates=3,  # top-3 classes per Jacobian-aware step (0: all)
      input_offset=-0.5,  # the model sees x - 0.5, as in launch/train_classifier.py
      checkpoint_dir="",  # "": <workdir>/classifier, trained there if missing (smoke)
      # > 0: attack chunks of this many images (chunk c: key fold_in(seed key, c)), shared out
      # between the processes of a multi-process run; 0: all at once
      attack_batch_size=0,
      # label information (nats) of the nuisance latent and of the logits on the selected
      # test images (invjax.information.information_summary)
      information=True,
      # the smoke classifier's training: cross-entropy, constant-rate Adam, no augmentation
      batch_size=64, learning_rate=1e-3, grad_clip=10.0, schedule="constant", nll_weight=0.0))
  if arg.smoke:
    config.update(dict(
        dataset="cifar10_mini", num_classes=10, head="slice", slice_dims=None,
        train_steps=300, num_examples=100, pgd_steps=10, cw_steps=50, cw_search_steps=3,
        latent_iters=3, latent_opt_steps=20))
    config.model = dict(name="glow", num_levels=1, num_steps=2, hidden=16, coupling="additive")
    return config
  trained = classifier.get_config(f"model={arg.model}")
  config.update(dict(
      dataset=trained.dataset, num_classes=trained.num_classes, head=trained.head,
      slice_dims=trained.slice_dims,
      train_steps=0,  # never trains: needs config.checkpoint_dir
      num_examples=1000, pgd_steps=40, cw_steps=200, cw_search_steps=5, latent_iters=5,
      latent_opt_steps=50))
  config.model = trained.model.to_dict()
  return config
