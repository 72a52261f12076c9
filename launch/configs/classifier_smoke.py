r"""Smoke test: a tiny i-RevNet classifier (pooled linear head) on the embedded mini CIFAR-10.

  python -m launch.train_classifier --config=launch/configs/classifier_smoke.py \
      --workdir=/tmp/classifier_smoke

Finishes in under 2 minutes on 2 CPU cores (1,000 training images, 500 test
images); it checks the plumbing, not the model: expect a test accuracy well above
chance (10%) but far from a full run. Variants: `classifier_smoke.py:glow` (Glow,
fully invertible "identity_slice" head, hybrid CE + 0.01 bits/dim) and
`classifier_smoke.py:iresnet` (i-ResNet, pooled head, no log-det).
"""
import ml_collections


def get_config(model: str = "irevnet") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.dataset = "cifar10_mini"
  config.num_train = 0  # 0: all
  config.num_test = 0
  config.num_classes = 10
  config.seed = 0
  variants = {
      "irevnet": (dict(name="irevnet", num_blocks=(1, 1), hidden=16), "pooled", 0.0, False),
      "glow": (dict(name="glow", num_levels=2, num_steps=2, hidden=16), "identity_slice",
               0.01, True),
      "iresnet": (dict(name="iresnet", stages=(1, 1), hidden=16, coeff=0.9, logdet="none"),
                  "pooled", 0.0, False),
  }
  model, head, nll_weight, report_bpd = variants[model]
  config.model = ml_collections.ConfigDict(model)
  config.head = head
  config.slice_dims = None
  config.nll_weight = nll_weight
  config.report_bits_per_dim = report_bpd
  config.augment = False
  config.init_batch_size = 128
  config.batch_size = 32
  config.num_steps = 150
  config.learning_rate = 2e-3
  config.warmup_steps = 15
  config.grad_clip = 10.0
  config.weight_decay = 0.0
  config.log_every = 25
  config.checkpoint_every = 75
  config.max_to_keep = 2
  config.eval_every = 0
  config.eval_batch_size = 250
  config.data_parallel = "auto"
  config.progress = True
  return config
