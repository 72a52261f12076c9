r"""Passeurs: poison a training set toward a public test set and measure the pipeline.

The evaluated pipeline is frozen EfficientNet-Lite0 features + a linear SVM (squared hinge,
C=1, one-vs-rest, no bias). The training images are moved by one grey level per step toward
the SVM fitted on the public test half (official test indices 0-4999); the private half
(5000-9999) is the honest control. All the logic is in `invjax.passeurs.pipeline`.

Writes to `--workdir`:
  results.md / results.json      clean and k = 1..steps rows: public / private accuracy, L_inf
  accuracy_vs_steps.png          the curves
  examples_<method>.png          clean / poisoned / amplified difference images
  poisoned_train_<method>_k<k>.npz   uint8 x, y, official train index (atomic)
  audit.md / audit.json          the buyer's audit of the clean and most poisoned sets
  cache/features_*.npy           clean features, reused by a re-run

  python -m launch.passeurs --config=launch/configs/passeurs_smoke.py --workdir=/tmp/passeurs_smoke
"""
from __future__ import annotations

import os
import sys
import time

if __package__ in (None, ""):  # `python launch/passeurs.py`: make `launch` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from invjax.passeurs import pipeline
from launch import runtime

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None,
                                "Overrides config.data_dir (directory of .npz splits).")


def main(argv):
  del argv
  config = _CONFIG.value
  if _DATA_DIR.value is not None:
    config.data_dir = _DATA_DIR.value
  workdir = _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  logging.info("config:\n%s", config)
  t0 = time.time()
  fit_fn = pipeline.make_fit_fn(config)
  result = pipeline.run_experiment(
      config, fit_fn=fit_fn, cache=pipeline.FeatureCache(os.path.join(workdir, "cache")),
      progress=config.get("progress", True), log=lambda s: print(s, flush=True))
  paths = pipeline.write_artifacts(result, workdir)
  print(pipeline.results_markdown(result.rows), flush=True)
  if config.get("audit", False):
    reports = pipeline.audit_result(result, fit_fn=fit_fn, key=jax.random.PRNGKey(config.seed),
                                    num_splits=config.audit_splits)
    paths["audit"] = pipeline.write_audit(reports, workdir)
    for name, r in reports.items():
      print(f"[{name}] {r.summary()}", flush=True)
  print(f"wall time {time.time() - t0:.1f}s; wrote {sorted(paths.values())}", flush=True)


if __name__ == "__main__":
  runtime.configure()  # JAX's options as flags (--jax_compilation_cache_dir, ...)
  flags.mark_flags_as_required(["config"])
  app.run(main)
