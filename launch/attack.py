r"""Attacks an invertible classifier: pixel-space (FGSM, PGD, CW) and latent-space attacks.

Runs every attack named in `config.attacks` (`invjax.attacks.suite`) on the correctly
classified images among the first `config.num_examples` test images and writes to
`--workdir`: results.md / results.json (success rate vs epsilon, median distances, cost,
time), success_vs_epsilon.png, grid_<attack>.png and metamers.png (invariance attack).
For a certifiable flow (`lipschitz_resnet`, `iresnet`), the latent attacks' rows also give
the image distance their latent change must cost, `|dz| / L_e` with the encoder's certified
constant (`invjax.robust.certificates`), beside the distance they measured. With
`config.information`, results also hold the label information (nats) of the nuisance latent
and of the logits on the selected images (Jacobsen et al. 2019; `invjax.information`).

The classifier comes from `config.checkpoint_dir` (a workdir of `launch/train_classifier.py`,
rebuilt from its `model.json`, or from `config.model` / `config.head` for a run without one);
when `config.train_steps > 0` and no checkpoint exists there, a classifier is first trained
in `<workdir>/classifier` (the smoke config does this in about a minute).

On a CPU the attacked batch is split over one JAX device per core (`--cpu_devices=-1`, the
default; `invjax.parallel.call_sharded`); `--cpu_devices=0` keeps JAX's single device.
Several processes (`--coordinator_address`, `--num_processes`, `--process_id` or
`--distributed`, `launch/runtime.py`): with `config.attack_batch_size > 0` each attacks its
block of the chunks of that many images, the results are gathered and process 0 writes the
tables and figures of one process with the same `attack_batch_size` (docs/multihost.md).

  python -m launch.attack --config=launch/configs/attack.py:smoke --workdir=/tmp/attack_smoke
"""
from __future__ import annotations

import os
import sys
from typing import Any, Dict

if __package__ in (None, ""):  # `python launch/attack.py`: make `launch` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from invjax import data as data_lib
from invjax import information
from invjax import train
from invjax._src import process
from invjax.attacks import report
from invjax.attacks import suite
from invjax.robust import certificates
from invjax.train import recipes
from launch import runtime


def _spec(config, image_shape) -> Dict[str, Any]:
  return recipes.classifier_spec(config.model, num_classes=config.num_classes,
                                 image_shape=image_shape, head=config.head,
                                 slice_dims=config.slice_dims, input_offset=config.input_offset)


def _train(config, spec, train_ds, test_ds, workdir: str) -> None:
  """The smoke classifier: cross-entropy (+ bits/dim) with constant-rate Adam, no augmentation."""
  optimizer = train.make_optimizer(learning_rate=config.learning_rate,
                                   num_steps=config.train_steps, grad_clip=config.grad_clip,
                                   schedule=config.schedule)
  recipes.train_classifier(
      spec, train_ds, test_ds, workdir, optimizer=optimizer, nll_weight=config.nll_weight,
      seed=config.seed, init_batch_size=config.batch_size, progress=False,
      num_steps=config.train_steps, batch_size=config.batch_size,
      log_every=max(1, config.train_steps // 5), checkpoint_every=config.train_steps,
      async_checkpoints=False)


def load_or_train(config, ckpt_dir: str, train_ds, test_ds):
  """(model, variables, spec, step) of the classifier in `ckpt_dir`, trained there first when
  `config.train_steps > 0` and it has no checkpoint."""
  spec = _spec(config, train_ds.x.shape[1:])
  if config.train_steps > 0 and not os.path.isdir(os.path.join(ckpt_dir, train.CHECKPOINT_DIR)):
    logging.info("training a classifier in %s", ckpt_dir)
    _train(config, spec, train_ds, test_ds, ckpt_dir)
  return recipes.restore_classifier(ckpt_dir, spec)


def run(config, workdir: str, data_dir: str | None = None) -> Dict[str, Any]:
  """Loads (or trains) the classifier, runs the attacks, writes tables and figures."""
  options = suite.SuiteOptions.from_config(config)
  suite.validate(config.attacks, options.norm, config.epsilons)
  os.makedirs(workdir, exist_ok=True)
  train_ds = data_lib.load(config.dataset, "train", data_dir)
  test_ds = data_lib.load(config.dataset, "test", data_dir)
  model, variables, spec, step = load_or_train(
      config, config.checkpoint_dir or os.path.join(workdir, "classifier"), train_ds, test_ds)
  n = min(config.num_examples, len(test_ds))
  encoder_lipschitz = None  # the bound only: no per-layer power-iteration lower bounds
  if certificates.certifiable(model):
    encoder_lipschitz = certificates.certified_lipschitz(model, variables,
                                                         power_iterations=0).encoder
  result = suite.run_suite(
      model, variables, data_lib.to_float(test_ds.x[:n]), np.asarray(test_ds.y[:n]),
      attacks=config.attacks, epsilons=config.epsilons, options=options,
      input_offset=spec["input_offset"], seed=config.seed, log=logging.info,
      across_processes=process.is_multiprocess(), encoder_lipschitz=encoder_lipschitz)
  if config.information:
    result.summary["information"] = information.information_summary(
        model, variables, data_lib.to_float(test_ds.x[:n]), np.asarray(test_ds.y[:n]),
        key=jax.random.PRNGKey(config.seed), input_offset=spec["input_offset"])
  files = report.write(result, workdir, step=step, num_images=n)
  runtime.echo(report.text(result.summary, step=step, num_images=n))
  return {"checkpoint_step": step, **result.summary, "files": files}


FLAGS = flags.FLAGS


def main(argv):
  runtime.start(argv)
  run(FLAGS.config, FLAGS.workdir, FLAGS.data_dir)


if __name__ == "__main__":
  runtime.configure()  # JAX's options as flags (--jax_compilation_cache_dir, ...)
  runtime.define_flags("attack.py:smoke", "Attack config file.",
                       "Where tables, figures (and a smoke classifier) go.")
  runtime.define_cpu_devices_flag(
      -1, "JAX CPU devices, the attacked batch split over them: -1 one per core (faster on a "
      "CPU, see invjax.parallel), 0 JAX's default.")
  app.run(main)
