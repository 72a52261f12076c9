r"""AutoAttack on a trained invertible classifier: a RobustBench-style robustness.json.

Runs `invjax.attacks.autoattack` (`invjax.attacks.ensemble`; APGD-CE, APGD-T, FAB-T, Square on the points still robust,
the per-example worst case, the sanity flags) on the first `config.num_examples` test images
at each of `config.epsilons` in `config.norm`, and writes to `--workdir`:
robustness.json (clean and robust accuracy, epsilon, norm, per-attack breakdown, flags; one
entry per epsilon under "evaluations") and robustness.md (the table, also printed).

The classifier comes from `config.checkpoint_dir` (a workdir of `launch/train_classifier.py`,
rebuilt from its `model.json`, or from `config.model` / `config.head` for a run without one);
when `config.train_steps > 0` and no checkpoint exists there, a classifier is first trained
in `<workdir>/classifier` (the smoke config does this, as `launch/attack.py`'s).

Several processes (`--coordinator_address`, `--num_processes`, `--process_id` or
`--distributed`, `launch/runtime.py`): each attacks its block of every attack's batches of
`config.attack_batch_size` points, the outcomes are gathered, and process 0 writes the same
robustness.json as one process (docs/multihost.md).

  python -m launch.evaluate --config=launch/configs/evaluate.py:smoke --workdir=/tmp/eval_smoke
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, Dict, Mapping, Optional

if __package__ in (None, ""):  # `python launch/evaluate.py`: make `launch` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from invjax import data as data_lib
from invjax._src import io
from invjax._src import process
from invjax.attacks.ensemble import (autoattack, markdown_table, resolve_attacks,
                                       robustness_json, schedule)
from invjax.attacks import suite
from launch import attack
from launch import runtime

JSON_FILE, TABLE_FILE = "robustness.json", "robustness.md"


def _steps(config):
  """The attacks of `config.version` with the config's budgets (validates norm and epsilons)."""
  suite.validate((), config.norm, config.epsilons)
  return schedule(
      config.version, config.norm, num_steps=config.attack_steps,
      num_queries=config.square_queries, num_restarts=config.num_restarts,
      num_target_classes=config.num_target_classes)


def run(config, workdir: str, data_dir: Optional[str] = None,
        attacks: Optional[Mapping[str, Callable]] = None) -> Dict[str, Any]:
  """Loads (or trains) the classifier, runs AutoAttack at every epsilon, writes the report.

  `attacks`: registry overrides passed on to `autoattack` (default: the invjax attacks).
  """
  steps = _steps(config)
  resolve_attacks(steps, attacks)  # a missing attack fails before any training
  os.makedirs(workdir, exist_ok=True)
  train_ds = data_lib.load(config.dataset, "train", data_dir)
  test_ds = data_lib.load(config.dataset, "test", data_dir)
  model, variables, spec, step = attack.load_or_train(
      config, config.checkpoint_dir or os.path.join(workdir, "classifier"), train_ds, test_ds)
  n = min(config.num_examples, len(test_ds))
  x, y = data_lib.to_float(test_ds.x[:n]), np.asarray(test_ds.y[:n])
  logits_fn = suite.make_context(model, variables, input_offset=spec["input_offset"],
                                 options=suite.SuiteOptions()).logits_fn
  key = jax.random.PRNGKey(config.seed)
  reports = []
  for i, eps in enumerate(config.epsilons):
    report = autoattack(
        logits_fn, x, y, key=jax.random.fold_in(key, i), epsilon=float(eps), norm=config.norm,
        version=config.version, steps=steps, attacks=attacks,
        batch_size=config.attack_batch_size, across_processes=process.is_multiprocess())
    logging.info("%s eps %.4g: clean %.1f%%, robust %.1f%% (%.0f s)", config.norm, eps,
                 100 * report.clean_accuracy, 100 * report.robust_accuracy, report.seconds)
    reports.append(report)
  summary = robustness_json(
      reports, dataset=config.dataset, architecture=spec["flow"]["name"], model=spec,
      checkpoint_step=step, budgets={s.name: dict(s.kwargs) for s in steps})
  table = markdown_table(reports)
  io.write_json(os.path.join(workdir, JSON_FILE), summary)
  io.write_text(os.path.join(workdir, TABLE_FILE),
                f"# AutoAttack ({config.version}), {n} test images of {config.dataset}, "
                f"checkpoint step {step}\n\n{table}")
  runtime.echo(table)
  return {**summary, "files": [JSON_FILE, TABLE_FILE]}


FLAGS = flags.FLAGS


def main(argv):
  runtime.start(argv)
  run(FLAGS.config, FLAGS.workdir, FLAGS.data_dir)


if __name__ == "__main__":
  runtime.configure()  # JAX's options as flags (--jax_compilation_cache_dir, ...)
  runtime.define_flags("evaluate.py:smoke", "Evaluation config file.",
                       "Where robustness.json / robustness.md (and a smoke classifier) go.")
  app.run(main)
