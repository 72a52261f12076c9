r"""Full-size invertible classifiers on CIFAR-10 (50,000 train / 10,000 test), for a GPU/TPU.

  python -m launch.train_classifier --config=launch/configs/classifier_cifar10.py:iresnet \
      --workdir=runs/clf_iresnet --data_dir=/path/to/cifar10_npz
  python -m launch.train_classifier --config=launch/configs/classifier_cifar10.py:irevnet \
      --workdir=runs/clf_irevnet --data_dir=/path/to/cifar10_npz
  python -m launch.train_classifier --config=launch/configs/classifier_cifar10.py:glow \
      --workdir=runs/clf_glow_hybrid --data_dir=/path/to/cifar10_npz

Without `--data_dir` the data come from tensorflow-datasets (`cifar10`). Data
parallel over all local devices; relaunching the same command resumes.

Targets (published numbers; these configs have NOT been run to convergence inside
invjax): i-ResNet with coefficient 0.9 is reported within about 1.3 points of an
unconstrained ResNet on CIFAR-10, roughly 93% test accuracy (Behrmann et al. 2019).
i-RevNet's published number is ImageNet (74.0% top-1), not CIFAR-10. The "glow"
variant is the fully invertible design of Jacobsen et al. (2019): the first 10
latent dims are the logits ("identity_slice"), trained with the hybrid loss
CE + nll_weight * bits/dim; no published CIFAR-10 number to compare with.
"""
import ml_collections


def get_config(model: str = "iresnet") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.dataset = "cifar10"
  config.num_train = 0
  config.num_test = 0
  config.num_classes = 10
  config.seed = 0
  variants = {
      "iresnet": (dict(name="iresnet", stages=(7, 7, 7), hidden=256, coeff=0.9,
                       logdet="none"), "pooled", 0.0, False),
      "irevnet": (dict(name="irevnet", num_blocks=(6, 6, 6), hidden=64), "pooled", 0.0,
                  False),
      "glow": (dict(name="glow", num_levels=3, num_steps=16, hidden=256), "identity_slice",
               0.01, True),
  }
  if model not in variants:
    raise ValueError(f"model must be one of {sorted(variants)}, got {model!r}")
  model_cfg, head, nll_weight, report_bpd = variants[model]
  config.model = ml_collections.ConfigDict(model_cfg)
  config.head = head
  config.slice_dims = None
  config.nll_weight = nll_weight
  config.report_bits_per_dim = report_bpd
  config.augment = True
  config.init_batch_size = 512
  config.batch_size = 128
  config.num_steps = 80_000  # about 200 epochs
  config.learning_rate = 1e-3
  config.warmup_steps = 2_000
  config.final_lr_fraction = 0.0
  config.grad_clip = 10.0
  config.weight_decay = 5e-4
  config.log_every = 200
  config.checkpoint_every = 2_000
  config.max_to_keep = 3
  config.eval_every = 4_000
  config.eval_batch_size = 500
  config.data_parallel = "auto"
  config.progress = True
  return config
