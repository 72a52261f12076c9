r"""Certifies trained classifiers: certification.json / .md and certified_curve.png.

Runs `invjax.robust.evaluation.certification_report` for each model of `config.models` on the
first `config.num_examples` test images: the Lipschitz certificate (`invjax.robust.
certificates` for invertible classifiers, `cnn_certificates` for Parseval CNNs, with its
check by attack) and / or randomized smoothing (`invjax.robust.smoothing`), certified
accuracy at `config.radii`.

Each model comes from its `checkpoint_dir` (a workdir of `launch/train_classifier.py` or
`launch/train_cnn.py`, rebuilt from its `model.json`); with `train` (a `classifier.py` /
`cnn.py` argument) and no checkpoint there, it is first trained there (the smoke config does
this for all three models, in `<workdir>/<name>`).

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
from invjax._src.checks import InvjaxError
from invjax.robust import evaluation
from invjax.train import recipes
from launch import runtime
from launch import train_classifier
from launch import train_cnn
from launch.configs import certify as certify_config
from launch.configs import classifier
from launch.configs import cnn


def _restore(name: str, entry, workdir: str, data_dir: Optional[str], progress: bool):
  """(model, variables, input_offset, info) of one model of the config, trained if asked."""
  ckpt = entry.checkpoint_dir or os.path.join(workdir, name)
  if entry.kind not in certify_config.KINDS:
    raise InvjaxError(f"models.{name}.kind must be one of {certify_config.KINDS}, "
                      f"got {entry.kind!r}")
  if entry.train and not os.path.isdir(os.path.join(ckpt, train.CHECKPOINT_DIR)):
    trainer, configs = ((train_classifier, classifier) if entry.kind == "classifier"
                        else (train_cnn, cnn))
    run_config = configs.get_config(entry.train)
    run_config.progress = progress
    trainer.train_and_evaluate(run_config, ckpt, data_dir)
  if entry.kind == "classifier":
    model, variables, spec, step = recipes.restore_classifier(ckpt)
    return model, variables, spec["input_offset"], {"checkpoint_step": step, "model": spec}
  model, variables, spec, step = recipes.restore_cnn(ckpt)
  return model, variables, 0.0, {"checkpoint_step": step, "model": spec}


def run(config, workdir: str, data_dir: Optional[str] = None) -> Dict[str, Any]:
  """Loads (or trains) each model of `config.models`, certifies the test images, writes the
  report (one table: a row per model and method)."""
  os.makedirs(workdir, exist_ok=True)
  test_ds = data_lib.load(config.dataset, "test", data_dir)
  n = min(int(config.num_examples), len(test_ds))
  x, y = data_lib.to_float(test_ds.x[:n]), np.asarray(test_ds.y[:n])
  report: Dict[str, Any] = {"num_examples": n, "radii": list(config.radii), "models": {}}
  all_curves = {}
  for name, entry in config.models.items():
    model, variables, offset, info = _restore(name, entry, workdir, data_dir, config.progress)
    rep, curves = evaluation.certification_report(
        model, variables, x, y, key=jax.random.PRNGKey(config.seed), radii=config.radii,
        methods=entry.methods, input_offset=offset, sigma=config.sigma,
        num_selection=config.num_selection, num_samples=config.num_samples,
        alpha=config.alpha, batch_size=config.batch_size,
        attack_examples=config.attack_examples, attack_fraction=config.attack_fraction,
        attack_steps=config.attack_steps, attack_restarts=config.attack_restarts)
    report["models"][name] = {**rep, **info}
    all_curves.update({f"{name}: {label}": c for label, c in curves.items()})
  files = evaluation.write_report(report, workdir, curves=all_curves)
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
