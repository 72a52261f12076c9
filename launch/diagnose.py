r"""Invertibility and detection diagnostics of a hybrid classifier: diagnostics.json / .md.

Runs `invjax.robust.diagnostics.diagnostics_report` on the first `config.num_examples` test
images of the classifier in `config.checkpoint_dir` (default `<workdir>/classifier`), trained
there first by `launch/train_classifier.py` with `config.train` when it has no checkpoint.

  python -m launch.diagnose --config=launch/configs/diagnose.py:smoke --workdir=/tmp/diagnose_smoke
"""
from __future__ import annotations

import os
import sys
from typing import Any, Dict, Optional

if __package__ in (None, ""):  # `python launch/diagnose.py`: make `launch` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
import jax
import numpy as np

from invjax import data as data_lib
from invjax import train
from invjax.robust import diagnostics
from invjax.train import recipes
from launch import runtime
from launch import train_classifier
from launch.configs import classifier


def run(config, workdir: str, data_dir: Optional[str] = None) -> Dict[str, Any]:
  """Loads (or trains) the classifier, runs both diagnostics, writes the report."""
  os.makedirs(workdir, exist_ok=True)
  ckpt = config.checkpoint_dir or os.path.join(workdir, "classifier")
  if config.train and not os.path.isdir(os.path.join(ckpt, train.CHECKPOINT_DIR)):
    run_config = classifier.get_config(config.train)
    run_config.progress = config.progress
    train_classifier.train_and_evaluate(run_config, ckpt, data_dir)
  model, variables, spec, step = recipes.restore_classifier(ckpt)
  test_ds = data_lib.load(config.dataset, "test", data_dir)
  n = min(int(config.num_examples), len(test_ds))
  x, y = data_lib.to_float(test_ds.x[:n]), np.asarray(test_ds.y[:n])
  report, markdown = diagnostics.diagnostics_report(
      model, variables, x, y, key=jax.random.PRNGKey(config.seed), epsilon=config.epsilon,
      norm=config.norm, num_steps=config.num_steps, ood=config.ood,
      tfds_data_dir=config.tfds_data_dir or None, adaptive_lambdas=config.adaptive_lambdas,
      latent_method=config.latent_method, input_offset=spec["input_offset"],
      num_iters=config.num_iters, batch_size=config.batch_size, fpr=config.fpr,
      only_correct=config.only_correct)
  report.update(checkpoint_dir=ckpt, checkpoint_step=step, model=spec)
  files = diagnostics.write_report(report, markdown, workdir)
  runtime.echo(markdown)
  return {**report, "files": files}


FLAGS = flags.FLAGS


def main(argv):
  runtime.start(argv)
  run(FLAGS.config, FLAGS.workdir, FLAGS.data_dir)


if __name__ == "__main__":
  runtime.configure()  # JAX's options as flags (--jax_compilation_cache_dir, ...)
  runtime.define_flags("diagnose.py:smoke", "Diagnostics config file.",
                       "Where diagnostics.json / .md (and a smoke classifier) go.")
  app.run(main)
