r"""Density estimation with a flow (Glow, RealNVP, i-ResNet) on CIFAR-10 images.

Trains on dequantised pixels `(x + u) / 256 - 0.5`, minimising bits/dim, and
reports bits/dim on the test split. Writes `metrics.jsonl`, `checkpoints/` and
`results.json` in `--workdir`; relaunching the same command resumes.

  python -m launch.train_flow --config=launch/configs/flow_smoke.py --workdir=/tmp/flow
  python -m launch.train_flow --config=launch/configs/flow_cifar10.py:glow \
      --workdir=runs/glow --data_dir=/path/to/cifar10_npz

`--data_dir` holds `train*.npz` / `test.npz` (see `invjax.data`); without it the
config's `dataset` is used (the embedded `cifar10_mini`, or tfds `cifar10`).
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Callable, Dict

if __package__ in (None, ""):  # `python launch/train_flow.py`: make `launch` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import optax

from invjax import data as data_lib
from invjax._src import io
from invjax import parallel
from invjax import train
from invjax._src.checks import InvjaxError
from invjax.flows import multiscale
from launch import runtime


def _kwargs(model_config) -> Dict[str, Any]:
  """The model's constructor arguments: every field of `config.model` except `name`."""
  kw = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
  kw.pop("name", None)
  return {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}


def _glow(model_config, image_shape):
  from invjax.flows.glow import Glow  # pylint: disable=g-import-not-at-top
  return Glow(image_shape=tuple(image_shape), **_kwargs(model_config))


def _realnvp(model_config, image_shape):
  from invjax.flows.glow import RealNVP  # pylint: disable=g-import-not-at-top
  return RealNVP(image_shape=tuple(image_shape), **_kwargs(model_config))


def _iresnet(model_config, image_shape):
  del image_shape
  from invjax.flows import iresnet  # pylint: disable=g-import-not-at-top
  return iresnet.from_config(_kwargs(model_config))


def _irevnet(model_config, image_shape):
  del image_shape
  from invjax.flows.irevnet import IRevNet  # pylint: disable=g-import-not-at-top
  return IRevNet(**_kwargs(model_config))


# name -> builder(config.model, image_shape (H, W, C)) -> flow module
FLOWS: Dict[str, Callable] = {"glow": _glow, "realnvp": _realnvp, "iresnet": _iresnet,
                              "irevnet": _irevnet}


def build_flow(model_config, image_shape):
  """The flow named `model_config.name` from the `FLOWS` registry."""
  name = model_config.name
  if name not in FLOWS:
    raise InvjaxError(f"unknown model '{name}', expected one of {sorted(FLOWS)}")
  return FLOWS[name](model_config, image_shape)


def make_optimizer(config) -> optax.GradientTransformation:
  """Adam(W) with linear warm-up then cosine decay, and global-norm gradient clipping."""
  if config.num_steps > 1 and config.warmup_steps >= config.num_steps:
    raise InvjaxError(
        f"warmup_steps ({config.warmup_steps}) must be smaller than num_steps "
        f"({config.num_steps}): the cosine decay after the warm-up would have no steps")
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, max(1, config.warmup_steps), max(2, config.num_steps),
      end_value=config.learning_rate * config.get("final_lr_fraction", 0.0))
  return optax.chain(optax.clip_by_global_norm(config.grad_clip),
                     optax.adamw(schedule, weight_decay=config.get("weight_decay", 0.0)))


def load_data(config, data_dir):
  """(train, test) `Dataset`s; `config.num_train` / `num_test` > 0 keep a prefix."""
  train_ds = data_lib.load(config.dataset, "train", data_dir)
  test_ds = data_lib.load(config.dataset, "test", data_dir)
  if config.get("num_train", 0):
    train_ds = train_ds.take(np.arange(min(config.num_train, len(train_ds))))
  if config.get("num_test", 0):
    test_ds = test_ds.take(np.arange(min(config.num_test, len(test_ds))))
  return train_ds, test_ds


def maybe_mesh(config):
  """A data-parallel mesh over the local devices when there are several (or if asked)."""
  use = config.get("data_parallel", "auto")
  if use is True or (use == "auto" and jax.local_device_count() > 1):
    return parallel.data_mesh()
  return None


def train_and_evaluate(config, workdir: str, data_dir: str | None = None) -> Dict[str, float]:
  """Trains the flow of `config` in `workdir` (resuming) and returns test metrics."""
  t_start = time.time()
  train_ds, test_ds = load_data(config, data_dir)
  image_shape = train_ds.x.shape[1:]
  num_dims = int(np.prod(image_shape))
  model = build_flow(config.model, image_shape)
  key = jax.random.PRNGKey(config.seed)
  init_key, deq_key, state_key = jax.random.split(key, 3)

  x_init = multiscale.uniform_dequantize(deq_key, train_ds.x[:config.init_batch_size]) - 0.5
  variables = jax.jit(model.init)({"params": init_key, "logdet": init_key}, x_init)
  params, model_state = train.split_variables(variables)
  mutable = list(model_state)
  optimizer = make_optimizer(config)
  state = train.TrainState.create(params, optimizer, state_key, model_state)
  logging.info("model %s: %d parameters", config.model.name,
               sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)))

  def bpd_per_example(params, model_state, x_uint8, rng):
    deq_rng, logdet_rng = jax.random.split(rng)
    x = multiscale.uniform_dequantize(deq_rng, x_uint8) - 0.5
    (z, log_det), new_state = model.apply({"params": params, **model_state}, x,
                                          rngs={"logdet": logdet_rng}, mutable=mutable)
    log_px = multiscale.standard_normal_logpdf(z) + log_det
    return multiscale.bits_per_dim(log_px, num_dims), new_state

  def loss_fn(params, model_state, batch, rng):
    bpd, new_state = bpd_per_example(params, model_state, batch["x"], rng)
    loss = jnp.mean(bpd)
    return loss, (new_state, {"bits_per_dim": loss})

  def metric_fn(params, model_state, batch):
    # A fixed dequantisation / estimator key: the same test number at every evaluation.
    bpd, _ = bpd_per_example(params, model_state, batch["x"], jax.random.PRNGKey(0))
    return {"bits_per_dim": bpd}

  train_step = train.make_train_step(loss_fn, optimizer, mutable=True, donate=True)
  eval_step = train.make_eval_step(metric_fn)
  state, eval_metrics = train.train_loop(
      config, state, train_step, train_ds, workdir, eval_step=eval_step,
      eval_dataset=test_ds, mesh=maybe_mesh(config), progress=config.get("progress", True))
  results = {"test_bits_per_dim": eval_metrics["bits_per_dim"], "step": int(state.step),
             "model": config.model.name, "wall_s": time.time() - t_start}
  if not math.isfinite(results["test_bits_per_dim"]):
    raise InvjaxError(f"test bits/dim is {results['test_bits_per_dim']}")
  write_results(workdir, results)
  return results


def write_results(workdir: str, results: Dict[str, Any]) -> None:
  """`workdir/results.json`, written atomically."""
  io.write_json(os.path.join(workdir, "results.json"), results)


FLAGS = flags.FLAGS


def define_flags(default_config: str) -> None:
  config_flags.DEFINE_config_file("config", default_config, "Experiment config file.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Where metrics, checkpoints and results go.")
  flags.DEFINE_string("data_dir", None, "Directory of .npz splits (default: config.dataset).")
  flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  results = train_and_evaluate(FLAGS.config, FLAGS.workdir, FLAGS.data_dir)
  print(f"test bits/dim {results['test_bits_per_dim']:.4f} after {results['step']} steps "
        f"({results['model']}, {results['wall_s']:.1f} s)")


if __name__ == "__main__":
  runtime.configure()  # JAX's options as flags (--jax_compilation_cache_dir, ...)
  define_flags(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                            "flow_smoke.py"))
  app.run(main)
