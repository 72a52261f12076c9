r"""Certifies a trained invertible classifier: certification.json / .md and certified_curve.png.

Runs `invjax.robust.evaluation.certification_report` on the first `config.num_examples` test
images: the Lipschitz certificate (`invjax.robust.certificates`, with its check by attack) and
randomized smoothing (`invjax.robust.smoothing`), certified accuracy at `config.radii`.

The classifier comes from `config.checkpoint_dir` (a workdir of `launch/train_classifier.py`,
rebuilt from its `model.json`); with `config.train` (a `classifier.py` argument) and no
checkpoint there, it is first trained in `<workdir>/classifier` (the smoke config does this).

  python -m launch.certify --config=launch/configs/certify.py:smoke --workdir=/tmp/certify_smoke
"""
from __future__ import annotations

import os
import sys
from typing import Any, Dict, Optional

if __package__ in (None, ""):  # `python launch/certify.py`: make `launch` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
import jax
import numpy as np

from invjax import data as data_lib
from invjax import train
from invjax.robust import evaluation
from invjax.train import recipes
from launch import runtime
from launch import train_classifier
from launch.configs import classifier


def run(config, workdir: str, data_dir: Optional[str] = None) -> Dict[str, Any]:
  """Loads (or trains) the classifier, certifies the test images, writes the report."""
  os.makedirs(workdir, exist_ok=True)
  ckpt = config.checkpoint_dir or os.path.join(workdir, "classifier")
  if config.train and not os.path.isdir(os.path.join(ckpt, train.CHECKPOINT_DIR)):
    clf_config = classifier.get_config(config.train)
    clf_config.progress = config.progress
    train_classifier.train_and_evaluate(clf_config, ckpt, data_dir)
  model, variables, spec, step = recipes.restore_classifier(ckpt)
  test_ds = data_lib.load(config.dataset, "test", data_dir)
  n = min(int(config.num_examples), len(test_ds))
  report, curves = evaluation.certification_report(
      model, variables, data_lib.to_float(test_ds.x[:n]), np.asarray(test_ds.y[:n]),
      key=jax.random.PRNGKey(config.seed), radii=config.radii, methods=config.methods,
      input_offset=spec["input_offset"], sigma=config.sigma, num_selection=config.num_selection,
      num_samples=config.num_samples, alpha=config.alpha, batch_size=config.batch_size,
      attack_examples=config.attack_examples, attack_fraction=config.attack_fraction,
      attack_steps=config.attack_steps, attack_restarts=config.attack_restarts)
  report.update(checkpoint_step=step, model=spec)
  files = evaluation.write_report(report, workdir, curves=curves)
  runtime.echo(evaluation.markdown(report))
  return {**report, "files": files}


FLAGS = flags.FLAGS


def main(argv):
  runtime.start(argv)
  run(FLAGS.config, FLAGS.workdir, FLAGS.data_dir)


if __name__ == "__main__":
  runtime.configure()  # JAX's options as flags (--jax_compilation_cache_dir, ...)
  runtime.define_flags("certify.py:smoke", "Certification config file.",
                       "Where certification.json / .md / certified_curve.png (and a smoke "
                       "classifier) go.")
  app.run(main)
