r"""Smoke test: a tiny Glow on the embedded mini CIFAR-10 (1,000 train / 500 test), CPU.

  python -m launch.train_flow --config=launch/configs/flow_smoke.py --workdir=/tmp/flow_smoke

Finishes in under 2 minutes on 2 CPU cores. It checks the plumbing (data,
dequantisation, bits/dim, checkpoints, resume), not the model: expect a test
bits/dim around 5 (uniform noise is 8; published full-size Glow reaches 3.35).
Use `--config=launch/configs/flow_smoke.py:iresnet` for a tiny i-ResNet instead.
"""
import ml_collections


def get_config(model: str = "glow") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.dataset = "cifar10_mini"
  config.num_train = 0  # 0: all
  config.num_test = 0
  config.seed = 0
  models = {
      "glow": dict(name="glow", num_levels=2, num_steps=2, hidden=16),
      "iresnet": dict(name="iresnet", stages=(1, 1), hidden=16, coeff=0.9,
                      logdet="power_series", n_terms=3),
  }
  config.model = ml_collections.ConfigDict(models[model])
  config.init_batch_size = 128  # ActNorm's data-dependent init
  config.batch_size = 32
  config.num_steps = 120
  config.learning_rate = 2e-3
  config.warmup_steps = 20
  config.grad_clip = 50.0
  config.weight_decay = 0.0
  config.log_every = 20
  config.checkpoint_every = 60
  config.max_to_keep = 2
  config.eval_every = 0  # 0: at the end only
  config.eval_batch_size = 250
  config.data_parallel = "auto"
  config.progress = True
  return config
