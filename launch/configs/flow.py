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
  config = ml_collections.ConfigDict(dict(
      num_train=0, num_test=0, seed=0,  # num_train / num_test 0: all
      data_parallel="auto", progress=True, weight_decay=0.0, final_lr_fraction=0.0))
  if arg.smoke:
    config.update(dict(
        dataset="cifar10_mini", init_batch_size=128,  # ActNorm's data-dependent init
        batch_size=32, num_steps=120, learning_rate=2e-3, warmup_steps=20, grad_clip=50.0,
        log_every=20, checkpoint_every=60, max_to_keep=2,
        eval_every=0, eval_batch_size=250))  # eval_every 0: at the end only
    config.model = choose("model", {
        "glow": dict(name="glow", num_levels=2, num_steps=2, hidden=16),
        "iresnet": dict(name="iresnet", stages=(1, 1), hidden=16, coeff=0.9,
                        logdet="power_series", n_terms=3),
    }, arg.model)
    return config
  config.update(dict(
      dataset="cifar10", init_batch_size=512, batch_size=64, num_steps=600_000,
      learning_rate=1e-3, warmup_steps=5_000, grad_clip=50.0, log_every=500,
      checkpoint_every=5_000, max_to_keep=3, eval_every=20_000, eval_batch_size=500))
  config.model = choose("model", {
      "glow": dict(name="glow", num_levels=3, num_steps=32, hidden=512, coupling="affine"),
      "realnvp": dict(name="realnvp", num_levels=3, hidden=64, coupling="affine"),
      "iresnet": dict(name="iresnet", stages=(16, 16, 16), hidden=512, coeff=0.9,
                      logdet="power_series", n_terms=5, n_power_iterations=5),
  }, arg.model)
  return config
