r"""Full-size density estimation on CIFAR-10 (50,000 train / 10,000 test), for a GPU/TPU.

  python -m launch.train_flow --config=launch/configs/flow_cifar10.py:glow \
      --workdir=runs/flow_glow --data_dir=/path/to/cifar10_npz
  python -m launch.train_flow --config=launch/configs/flow_cifar10.py:iresnet \
      --workdir=runs/flow_iresnet --data_dir=/path/to/cifar10_npz
  python -m launch.train_flow --config=launch/configs/flow_cifar10.py:realnvp \
      --workdir=runs/flow_realnvp --data_dir=/path/to/cifar10_npz

Without `--data_dir` the data come from tensorflow-datasets (`cifar10`). Data
parallel over all local devices (the batch size must be a multiple of their count);
relaunching the same command resumes from the last checkpoint.

Published test bits/dim (the targets; these configs have NOT been run to
convergence inside invjax, so they are what to aim for, not a claim):
  Glow 3.35 (Kingma & Dhariwal 2018: 3 levels x 32 steps, 512 channels, affine coupling),
  i-ResNet 3.45 (Behrmann et al. 2019), RealNVP 3.49 (Dinh et al. 2017).
Known differences: dequantisation is uniform, inputs are shifted to [-0.5, 0.5)
(no logit preprocessing), i-ResNet's log-det is the truncated power series
(an estimate) during training and evaluation.
"""
import ml_collections


def get_config(model: str = "glow") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.dataset = "cifar10"
  config.num_train = 0
  config.num_test = 0
  config.seed = 0
  models = {
      "glow": dict(name="glow", num_levels=3, num_steps=32, hidden=512, coupling="affine"),
      "realnvp": dict(name="realnvp", num_levels=3, hidden=64, coupling="affine"),
      "iresnet": dict(name="iresnet", stages=(16, 16, 16), hidden=512, coeff=0.9,
                      logdet="power_series", n_terms=5, n_power_iterations=5),
  }
  if model not in models:
    raise ValueError(f"model must be one of {sorted(models)}, got {model!r}")
  config.model = ml_collections.ConfigDict(models[model])
  config.init_batch_size = 512
  config.batch_size = 64
  config.num_steps = 600_000
  config.learning_rate = 1e-3
  config.warmup_steps = 5_000
  config.final_lr_fraction = 0.0
  config.grad_clip = 50.0
  config.weight_decay = 0.0
  config.log_every = 500
  config.checkpoint_every = 5_000
  config.max_to_keep = 3
  config.eval_every = 20_000
  config.eval_batch_size = 500
  config.data_parallel = "auto"
  config.progress = True
  return config
