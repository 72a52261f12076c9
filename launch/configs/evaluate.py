r"""AutoAttack evaluation of an invertible classifier: robustness.json and robustness.md.

  python -m launch.evaluate --config=launch/configs/evaluate.py:smoke --workdir=/tmp/eval_smoke

  python -m launch.train_classifier --config=launch/configs/classifier.py:model=iresnet \
      --workdir=runs/clf_iresnet --data_dir=../shared/data/cifar10
  python -m launch.evaluate --config=launch/configs/evaluate.py:model=iresnet \
      --config.checkpoint_dir=runs/clf_iresnet --workdir=runs/eval_iresnet \
      --data_dir=../shared/data/cifar10
  python -m launch.evaluate --config=launch/configs/evaluate.py:model=iresnet,norm=l2 \
      --config.checkpoint_dir=runs/clf_iresnet --workdir=runs/eval_iresnet_l2 \
      --data_dir=../shared/data/cifar10

`smoke` (also `smoke,norm=l2`): trains a 1-level additive Glow classifier for 200 steps on the
embedded mini CIFAR-10 into `<workdir>/classifier` (reused on a rerun, as `attack.py:smoke`),
then runs AutoAttack with small budgets (APGD and FAB 10 iterations, Square 200 queries) on
the first 50 test images at L_inf 0.5/255 and 1/255 (L2: 0.05, 0.1; small budgets, at which the
weak smoke model still has robust points left for every attack), in a minute or two on a CPU.
A plumbing check: the numbers say nothing about a real model.

`model=iresnet|irevnet|glow` (with `norm=linf|l2`): a trained CIFAR-10 classifier (a workdir of
launch/train_classifier.py, rebuilt from its model.json; the model fields are copied from
`classifier.py:model=<model>` for runs without one), AutoAttack "standard" with its budgets
(APGD-CE and APGD-T 100 iterations, 9 target classes, FAB-T 100 iterations, Square 5,000
queries, one restart each), RobustBench's budgets L_inf 8/255 or L2 0.5, the first 1,000 test
images (RobustBench uses all 10,000).
"""
import ml_collections

from launch.configs import choose, classifier
from launch.configs import parse_arg

# smoke: budgets at which the weak smoke classifier keeps a few robust points for every attack
EPSILONS = {"smoke": {"linf": (0.5 / 255, 1 / 255), "l2": (0.05, 0.1)},
            "full": {"linf": (8 / 255,), "l2": (0.5,)}}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  arg = parse_arg(arg, smoke=False, model="iresnet", norm="linf")
  mode = "smoke" if arg.smoke else "full"
  config = ml_collections.ConfigDict(dict(
      seed=0, norm=arg.norm, epsilons=choose("norm", EPSILONS[mode], arg.norm),
      version="standard",  # AutoAttack's "standard" (or "plus") attacks, in its order
      input_offset=-0.5,  # the model sees x - 0.5, as in launch/train_classifier.py
      checkpoint_dir="",  # "": <workdir>/classifier, trained there if missing (smoke)
      attack_batch_size=250,  # points attacked at once
      # the smoke classifier's training: cross-entropy, constant-rate Adam, no augmentation
      batch_size=64, learning_rate=1e-3, grad_clip=10.0, schedule="constant", nll_weight=0.0))
  if arg.smoke:
    config.update(dict(
        dataset="cifar10_mini", num_classes=10, head="slice", slice_dims=None,
        train_steps=200, num_examples=50,
        attack_steps=10, square_queries=200, num_target_classes=9, num_restarts=1))
    config.model = dict(name="glow", num_levels=1, num_steps=2, hidden=16, coupling="additive")
    return config
  trained = classifier.get_config(f"model={arg.model}")
  config.update(dict(
      dataset=trained.dataset, num_classes=trained.num_classes, head=trained.head,
      slice_dims=trained.slice_dims,
      train_steps=0,  # never trains: needs config.checkpoint_dir
      num_examples=1000,
      attack_steps=100, square_queries=5000, num_target_classes=9, num_restarts=1))
  config.model = trained.model.to_dict()
  return config
