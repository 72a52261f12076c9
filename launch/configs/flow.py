r"""Density estimation with a flow (Glow, RealNVP, i-ResNet) on CIFAR-10 images.

  python -m launch.train_flow --config=launch/configs/flow.py:smoke --workdir=/tmp/flow_smoke
  python -m launch.train_flow --config=launch/configs/flow.py:smoke,model=iresnet \
      --workdir=/tmp/flow_smoke_iresnet
  python -m launch.train_flow --config=launch/configs/flow.py:model=glow \
      --workdir=runs/flow_glow --data_dir=/path/to/cifar10_npz
  python -m launch.train_flow --config=launch/configs/flow.py:model=iresnet \
      --workdir=runs/flow_iresnet --data_dir=/path/to/cifar10_npz
  python -m launch.train_flow --config=launch/configs/flow.py:model=realnvp \
      --workdir=runs/flow_realnvp --data_dir=/path/to/cifar10_npz

`smoke`: a tiny Glow (or i-ResNet) on the embedded mini CIFAR-10 (1,000 train / 500 test),
under 2 minutes on 2 CPU cores. It checks the plumbing (data, dequantisation, bits/dim,
checkpoints, resume), not the model: expect a test bits/dim around 5 (uniform noise is 8).

Full size (50,000 train / 10,000 test, for a GPU/TPU; without `--data_dir` the data come from
tensorflow-datasets `cifar10`): data parallel over all local devices (the batch size must be
a multiple of their count); relaunching the same command resumes. Published test bits/dim
(the targets; these configs have NOT been run to convergence inside invjax, so they are what
to aim for, not a claim): Glow 3.35 (Kingma & Dhariwal 2018: 3 levels x 32 steps, 512
channels, affine coupling), i-ResNet 3.45 (Behrmann et al. 2019), RealNVP 3.49 (Dinh et al.
2017). Known differences: dequantisation is uniform, inputs are shifted to [-0.5, 0.5) (no
logit preprocessing), i-ResNet's log-det is the truncated power series (an estimate) during
training and evaluation.
"""
import ml_collections

from launch.configs import choose, parse_arg


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  arg = parse_arg(arg, smoke=False, model="glow")
  config = ml_collections.ConfigDict()
  config.num_train = 0  # 0: all
  config.num_test = 0
  config.seed = 0
  config.data_parallel = "auto"
  config.progress = True
  config.weight_decay = 0.0
  config.final_lr_fraction = 0.0
  if arg.smoke:
    config.dataset = "cifar10_mini"
    config.model = choose("model", {
        "glow": dict(name="glow", num_levels=2, num_steps=2, hidden=16),
        "iresnet": dict(name="iresnet", stages=(1, 1), hidden=16, coeff=0.9,
                        logdet="power_series", n_terms=3),
    }, arg.model)
    config.init_batch_size = 128  # ActNorm's data-dependent init
    config.batch_size = 32
    config.num_steps = 120
    config.learning_rate = 2e-3
    config.warmup_steps = 20
    config.grad_clip = 50.0
    config.log_every = 20
    config.checkpoint_every = 60
    config.max_to_keep = 2
    config.eval_every = 0  # 0: at the end only
    config.eval_batch_size = 250
    return config
  config.dataset = "cifar10"
  config.model = choose("model", {
      "glow": dict(name="glow", num_levels=3, num_steps=32, hidden=512, coupling="affine"),
      "realnvp": dict(name="realnvp", num_levels=3, hidden=64, coupling="affine"),
      "iresnet": dict(name="iresnet", stages=(16, 16, 16), hidden=512, coeff=0.9,
                      logdet="power_series", n_terms=5, n_power_iterations=5),
  }, arg.model)
  config.init_batch_size = 512
  config.batch_size = 64
  config.num_steps = 600_000
  config.learning_rate = 1e-3
  config.warmup_steps = 5_000
  config.grad_clip = 50.0
  config.log_every = 500
  config.checkpoint_every = 5_000
  config.max_to_keep = 3
  config.eval_every = 20_000
  config.eval_batch_size = 500
  return config
