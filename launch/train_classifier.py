r"""Invertible classifier (flow + linear head on the latent), optionally hybrid with NLL.

Loss: cross-entropy + `config.nll_weight` * bits/dim of the flow (0: plain classifier)
(`invjax.train.recipes.train_classifier`). Reports test accuracy (and bits/dim when asked).
Writes `metrics.jsonl`, `checkpoints/`, `model.json` and `results.json` in `--workdir`;
relaunching the same command resumes.

  python -m launch.train_classifier --config=launch/configs/classifier.py:smoke \
      --workdir=/tmp/clf
  python -m launch.train_classifier --config=launch/configs/classifier.py:model=iresnet \
      --workdir=runs/iresnet_clf --data_dir=/path/to/cifar10_npz
  python -m launch.train_classifier --config=launch/configs/classifier.py:smoke,model=certified \
      --workdir=/tmp/clf_certified  # Lipschitz-margin training of a certifiable classifier
  python -m launch.train_classifier \
      --config=launch/configs/classifier.py:smoke,model=glow,adversarial=latent \
      --workdir=/tmp/clf_latent_at  # latent adversarial training (or adversarial=pgd)
"""
from __future__ import annotations

import os
import sys
from typing import Any, Dict

if __package__ in (None, ""):  # `python launch/train_classifier.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags

from invjax import parallel
from invjax import train
from invjax.train import recipes
from launch import runtime


def train_and_evaluate(config, workdir: str, data_dir: str | None = None) -> Dict[str, Any]:
  """Trains the classifier of `config` in `workdir` (resuming) and returns test metrics."""
  train_ds, test_ds = runtime.load_splits(config, data_dir)
  spec = recipes.classifier_spec(config.model, num_classes=config.num_classes,
                                 image_shape=train_ds.x.shape[1:], head=config.head,
                                 slice_dims=config.slice_dims, input_offset=config.input_offset)
  return recipes.train_classifier(
      spec, train_ds, test_ds, workdir,
      optimizer=train.make_optimizer(**train.optimizer_kwargs(config)),
      nll_weight=config.nll_weight, augment=config.augment,
      report_bits_per_dim=config.report_bits_per_dim, init_batch_size=config.init_batch_size,
      lipschitz_margin=config.lipschitz_margin, margin_variant=config.margin_variant,
      noise_sigma=config.noise_sigma, independence_weight=config.independence_weight,
      nuisance_learning_rate=config.nuisance_learning_rate,
      report_nuisance_information=config.report_nuisance_information,
      adversarial=config.adversarial, adversarial_epsilon=config.adversarial_epsilon,
      adversarial_steps=config.adversarial_steps,
      adversarial_fraction=config.adversarial_fraction,
      mesh=parallel.maybe_data_mesh(config.data_parallel),
      progress=config.progress,
      **train.loop_kwargs(config))


FLAGS = flags.FLAGS


def main(argv):
  runtime.start(argv)
  results = train_and_evaluate(FLAGS.config, FLAGS.workdir, FLAGS.data_dir)
  extra = (f", test bits/dim {results['test_bits_per_dim']:.4f}"
           if "test_bits_per_dim" in results else "")
  if "certified_accuracy" in results:
    extra += (f", certified accuracy {results['certified_accuracy']:.4f} at L2 "
              f"{results['lipschitz_margin']:.4g} "
              f"(Lipschitz {results['certified_lipschitz']:.4g})")
  if "nuisance_ce_bound" in results:
    extra += (f", nuisance-label information {results['nuisance_ce_bound']:.4f} nats (CE bound),"
              f" {results['nuisance_ksg']:.4f} (KSG)")
  runtime.echo(f"test accuracy {results['test_accuracy']:.4f}{extra} after {results['step']} steps "
               f"({results['model']}, {results['wall_s']:.1f} s)")


if __name__ == "__main__":
  runtime.configure()  # JAX's options as flags (--jax_compilation_cache_dir, ...)
  runtime.define_flags("classifier.py:smoke")
  app.run(main)
