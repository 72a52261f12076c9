r"""Passeurs: poison a training set toward a public test set and measure the pipeline.

The evaluated pipeline is frozen EfficientNet-Lite0 features + a linear SVM (squared hinge,
C=1, one-vs-rest, no bias). The training images are moved by one grey level per step toward
the SVM fitted on the public test half (official test indices 0-4999); the private half
(5000-9999) is the honest control. All the logic is in `invjax.passeurs.experiment`
(`run_and_write`); this script maps the config onto its keywords.

Writes to `--workdir`:
  results.md / results.json      clean and k = 1..steps rows: public / private accuracy, L_inf
  accuracy_vs_steps.png          the curves
  examples_<method>.png          clean / poisoned / amplified difference images
  poisoned_train_<method>_k<k>.npz   uint8 x, y, official train index (atomic)
  audit.md / audit.json          the buyer's audit of the clean and most poisoned sets
  cache/features_*.npy           clean features, reused by a re-run

  python -m launch.passeurs --config=launch/configs/passeurs.py:smoke --workdir=/tmp/passeurs_smoke

Several processes (`--coordinator_address`, `--num_processes`, `--process_id` or
`--distributed`, `launch/runtime.py`): each embeds and poisons its batches of the training
images, process 0 writes the files, the same as one process's (docs/multihost.md).
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # `python launch/passeurs.py`: make `launch` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from invjax.passeurs import experiment
from launch import runtime

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None,
                                "Overrides config.data_dir (directory of .npz splits).")


def main(argv):
  runtime.start(argv)
  config = _CONFIG.value
  if _DATA_DIR.value is not None:
    config.data_dir = _DATA_DIR.value
  logging.info("config:\n%s", config)
  experiment.run_and_write(
      _WORKDIR.value, dataset=config.dataset, data_dir=config.data_dir or None,
      train_limit=config.train_limit, test_limit=config.test_limit,
      public_boundary=config.public_boundary, extractor=config.extractor,
      resolution=config.resolution, seed=config.seed, svm_backend=config.svm_backend,
      svm_C=config.svm_C, svm_tol=config.svm_tol, audit=config.audit,
      audit_splits=config.audit_splits, steps=config.steps, methods=config.methods,
      batch_size=config.batch_size, margin=config.margin, sign_momentum=config.sign_momentum,
      rotation_delta=config.rotation_delta, progress=config.progress,
      log=runtime.echo, record=config.to_dict())


if __name__ == "__main__":
  runtime.configure()  # JAX's options as flags (--jax_compilation_cache_dir, ...)
  flags.mark_flags_as_required(["config"])
  app.run(main)
