r"""Density estimation with a flow (Glow, RealNVP, i-ResNet) on CIFAR-10 images.

Trains on dequantised pixels `(x + u) / 256 - 0.5`, minimising bits/dim, and reports
bits/dim on the test split (`invjax.train.recipes.train_flow`). Writes `metrics.jsonl`,
`checkpoints/` and `results.json` in `--workdir`; relaunching the same command resumes.

  python -m launch.train_flow --config=launch/configs/flow.py:smoke --workdir=/tmp/flow
  python -m launch.train_flow --config=launch/configs/flow.py:model=glow \
      --workdir=runs/glow --data_dir=/path/to/cifar10_npz

`--data_dir` holds `train*.npz` / `test.npz` (see `invjax.data`); without it the config's
`dataset` is used (the embedded `cifar10_mini`, or tfds `cifar10`).
"""
from __future__ import annotations

import os
import sys
from typing import Any, Dict

if __package__ in (None, ""):  # `python launch/train_flow.py`: make `launch` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags

from invjax import flows
from invjax import parallel
from invjax import train
from invjax.train import recipes
from launch import runtime


def train_and_evaluate(config, workdir: str, data_dir: str | None = None) -> Dict[str, Any]:
  """Trains the flow of `config` in `workdir` (resuming) and returns test metrics."""
  train_ds, test_ds = runtime.load_splits(config, data_dir)
  return recipes.train_flow(
      flows.from_config(config.model, train_ds.x.shape[1:]), train_ds, test_ds, workdir,
      optimizer=train.make_optimizer(**train.optimizer_kwargs(config)), name=config.model.name,
      init_batch_size=config.init_batch_size, mesh=parallel.maybe_data_mesh(config.data_parallel),
      progress=config.progress, **train.loop_kwargs(config))


FLAGS = flags.FLAGS


def main(argv):
  runtime.start(argv)
  results = train_and_evaluate(FLAGS.config, FLAGS.workdir, FLAGS.data_dir)
  runtime.echo(f"test bits/dim {results['test_bits_per_dim']:.4f} after {results['step']} steps "
               f"({results['model']}, {results['wall_s']:.1f} s)")


if __name__ == "__main__":
  runtime.configure()  # JAX's options as flags (--jax_compilation_cache_dir, ...)
  runtime.define_flags("flow.py:smoke")
  app.run(main)
