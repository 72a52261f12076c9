r"""Invertible classifiers (flow + linear head on the latent), optionally hybrid with the NLL.

  python -m launch.train_classifier --config=launch/configs/classifier.py:smoke \
      --workdir=/tmp/classifier_smoke
  python -m launch.train_classifier --config=launch/configs/classifier.py:model=iresnet \
      --workdir=runs/clf_iresnet --data_dir=/path/to/cifar10_npz
  python -m launch.train_classifier --config=launch/configs/classifier.py:model=irevnet \
      --workdir=runs/clf_irevnet --data_dir=/path/to/cifar10_npz
  python -m launch.train_classifier --config=launch/configs/classifier.py:model=glow \
      --workdir=runs/clf_glow_hybrid --data_dir=/path/to/cifar10_npz

Certified invertible classifier (`lipschitz_resnet`: 1-Lipschitz residual blocks, trained with
the Lipschitz-margin loss at `lipschitz_margin` = 36/255; results.json then holds the certified
constant and the certified test accuracy at that l2 radius):

  python -m launch.train_classifier --config=launch/configs/classifier.py:smoke,model=certified \
      --workdir=/tmp/cert_smoke
  python -m launch.train_classifier --config=launch/configs/classifier.py:cpu,model=certified \
      --workdir=runs/clf_certified_cpu --data_dir=/path/to/cifar10_npz
  python -m launch.train_classifier --config=launch/configs/classifier.py:model=certified \
      --workdir=runs/clf_certified --data_dir=/path/to/cifar10_npz

`smoke` (default model irevnet: a tiny i-RevNet with a pooled linear head) on the embedded
mini CIFAR-10 finishes in under 2 minutes on 2 CPU cores; it checks the plumbing, not the
model: expect a test accuracy well above chance (10%) but far from a full run. Smoke
variants: `smoke,model=glow` (Glow, fully invertible "identity_slice" head, hybrid CE + 0.01
bits/dim), `smoke,model=iresnet` (i-ResNet, pooled head, no log-det) and
`smoke,model=certified` (certified i-ResNet, 2 stages x 1 block, a linear head on the whole
latent, margin loss).
`cpu,model=certified` is full CIFAR-10 (50,000 / 10,000) with a small certified i-ResNet
(2 stages x 2 blocks, hidden 32, 4,000 steps) meant for 2 CPU cores; it has not been run to
completion and its cost is not measured yet.

Full size (50,000 train / 10,000 test, GPU/TPU; default model iresnet; without `--data_dir`
the data come from tensorflow-datasets `cifar10`), data parallel over all local devices;
relaunching the same command resumes. Targets (published numbers; these configs have NOT been
run to convergence inside invjax): i-ResNet with coefficient 0.9 is reported within about 1.3
points of an unconstrained ResNet on CIFAR-10, roughly 93% test accuracy (Behrmann et al.
2019). i-RevNet's published number is ImageNet (74.0% top-1), not CIFAR-10. The "glow"
variant is the fully invertible design of Jacobsen et al. (2019): the first 10 latent dims are
the logits ("identity_slice"), trained with the hybrid loss CE + nll_weight * bits/dim; no
published CIFAR-10 number to compare with. Certified anchors (published, GPU, large models, l2
radius 36/255): LiResNet 78.1%, AOL-MLP 77.6% (both with generated data), SLL X-Large ~66%;
no invertible network has a published certificate.

Independence cross-entropy (Jacobsen et al. 2019; `invjax.robust.independence`): the nuisance
latent (what the head ignores) is trained to carry no label information; results.json then
also holds the test nuisance-label information (`nuisance_ce_bound`, `nuisance_ksg`, nats).
Not measured yet on the mini or full data:

  python -m launch.train_classifier \
      --config=launch/configs/classifier.py:smoke,model=glow,independence=1.0 \
      --workdir=/tmp/ice_smoke

Adversarial training (`invjax.robust.adversarial_training`): half of each batch replaced by
L_inf 8/255 examples, from PGD-7 (Madry et al. 2018) or from invjax's Jacobian-aware latent
step (one linearised encoder pass; `adversarial_steps=N` changes either count); measured at
equal wall time in docs/results/latent_training.md:

  python -m launch.train_classifier \
      --config=launch/configs/classifier.py:smoke,model=glow,adversarial=latent \
      --workdir=/tmp/latent_at_smoke
  python -m launch.train_classifier \
      --config=launch/configs/classifier.py:smoke,model=glow,adversarial=pgd \
      --workdir=/tmp/pgd_at_smoke
"""
import ml_collections

from launch.configs import choose, parse_arg


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  arg = parse_arg(arg, smoke=False, cpu=False, model="", independence=0.0, adversarial="",
                  adversarial_steps=0)
  config = ml_collections.ConfigDict(dict(
      num_train=0, num_test=0, num_classes=10, seed=0,  # num_train / num_test 0: all
      slice_dims=None, input_offset=-0.5,  # the model sees x - 0.5
      final_lr_fraction=0.0, data_parallel="auto", progress=True,
      # Lipschitz-margin training (0: cross-entropy) and Gaussian noise on training inputs.
      lipschitz_margin=0.0, margin_variant="tsuzuku", noise_sigma=0.0,
      # Independence cross-entropy (Jacobsen et al. 2019; 0: off): the encoder maximises a
      # linear nuisance classifier's cross-entropy, that classifier learns by SGD.
      independence_weight=arg.independence, nuisance_learning_rate=0.5,
      report_nuisance_information=arg.independence > 0,
      # Adversarial training ("": off; "pgd": Madry et al. 2018; "latent": the Jacobian-aware
      # latent step of invjax.attacks.latent, linear decode): `adversarial_fraction` of each
      # batch replaced by L_inf examples of radius `adversarial_epsilon`, made on the current
      # model with `adversarial_steps` PGD steps (default 7) or latent re-linearisations (1).
      adversarial=arg.adversarial, adversarial_epsilon=8 / 255,
      adversarial_steps=arg.adversarial_steps or (1 if arg.adversarial == "latent" else 7),
      adversarial_fraction=0.5))
  margin = 36 / 255  # the l2 radius certified-robustness tables report first
  if arg.smoke:
    # model -> (flow, head, nll_weight, report_bits_per_dim)
    variants = {
        "irevnet": (dict(name="irevnet", num_blocks=(1, 1), hidden=16), "pooled", 0.0, False),
        "glow": (dict(name="glow", num_levels=2, num_steps=2, hidden=16), "identity_slice",
                 0.01, True),
        "iresnet": (dict(name="iresnet", stages=(1, 1), hidden=16, coeff=0.9, logdet="none"),
                    "pooled", 0.0, False),
        "certified": (dict(name="lipschitz_resnet", stages=(1, 1), hidden=16, coeff=0.9),
                      "slice", 0.0, False),
    }
    model = arg.model or "irevnet"
    config.update(dict(
        dataset="cifar10_mini", augment=False, init_batch_size=128, batch_size=32,
        num_steps=150, learning_rate=2e-3, warmup_steps=15, grad_clip=10.0, weight_decay=0.0,
        log_every=25, checkpoint_every=75, max_to_keep=2, eval_every=0, eval_batch_size=250))
  elif arg.cpu:
    variants = {
        "certified": (dict(name="lipschitz_resnet", stages=(2, 2), hidden=32, coeff=0.9),
                      "slice", 0.0, False),
    }
    model = arg.model or "certified"
    config.update(dict(
        dataset="cifar10", augment=True, init_batch_size=256, batch_size=128,
        num_steps=4_000,  # about 10 epochs
        learning_rate=2e-3, warmup_steps=300, grad_clip=10.0, weight_decay=0.0,
        log_every=100, checkpoint_every=1_000, max_to_keep=2, eval_every=0,
        eval_batch_size=500))
  else:
    variants = {
        "iresnet": (dict(name="iresnet", stages=(7, 7, 7), hidden=256, coeff=0.9,
                         logdet="none"), "pooled", 0.0, False),
        "irevnet": (dict(name="irevnet", num_blocks=(6, 6, 6), hidden=64), "pooled", 0.0,
                    False),
        "glow": (dict(name="glow", num_levels=3, num_steps=16, hidden=256), "identity_slice",
                 0.01, True),
        "certified": (dict(name="lipschitz_resnet", stages=(4, 4, 4), hidden=128, coeff=0.9),
                      "slice", 0.0, False),
    }
    model = arg.model or "iresnet"
    config.update(dict(
        dataset="cifar10", augment=True, init_batch_size=512, batch_size=128,
        num_steps=80_000,  # about 200 epochs
        learning_rate=1e-3, warmup_steps=2_000, grad_clip=10.0, weight_decay=5e-4,
        log_every=200, checkpoint_every=2_000, max_to_keep=3, eval_every=4_000,
        eval_batch_size=500))
  flow, config.head, config.nll_weight, config.report_bits_per_dim = choose(
      "model", variants, model)
  config.model = flow
  if model == "certified":
    config.lipschitz_margin = margin
  return config
