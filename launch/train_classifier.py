r"""Invertible classifier (flow + linear head on the latent), optionally hybrid with NLL.

Loss: cross-entropy + `config.nll_weight` * bits/dim of the flow (0: plain
classifier). Reports test accuracy (and bits/dim when the flow has a log-det).
Writes `metrics.jsonl`, `checkpoints/` and `results.json` in `--workdir`;
relaunching the same command resumes.

  python -m launch.train_classifier --config=launch/configs/classifier_smoke.py \
      --workdir=/tmp/clf
  python -m launch.train_classifier --config=launch/configs/classifier_cifar10.py:iresnet \
      --workdir=runs/iresnet_clf --data_dir=/path/to/cifar10_npz
"""
from __future__ import annotations

import os
import sys
import time
from typing import Dict

if __package__ in (None, ""):  # `python launch/train_classifier.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from invjax import data as data_lib
from invjax import train
from invjax.flows import classifier as clf_lib
from invjax.flows import multiscale
from launch import runtime
from launch import train_flow


def augment(key, x):
  """Random horizontal flips and 4-pixel-padded random crops of NHWC images `x`."""
  b, h, w, _ = x.shape
  k_flip, k_crop = jax.random.split(key)
  flip = jax.random.bernoulli(k_flip, 0.5, (b,))
  x = jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)
  padded = jnp.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
  offsets = jax.random.randint(k_crop, (b, 2), 0, 9)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, x.shape[-1]))
  return jax.vmap(crop)(padded, offsets)


def train_and_evaluate(config, workdir: str, data_dir: str | None = None) -> Dict[str, float]:
  """Trains the classifier of `config` in `workdir` (resuming) and returns test metrics."""
  t_start = time.time()
  train_ds, test_ds = train_flow.load_data(config, data_dir)
  image_shape = tuple(train_ds.x.shape[1:])
  num_classes = int(config.num_classes)
  flow = train_flow.build_flow(config.model, image_shape)
  model = clf_lib.make_classifier(flow, num_classes, image_shape, head=config.head,
                                  slice_dims=config.get("slice_dims", None))
  nll_weight = float(config.nll_weight)
  key = jax.random.PRNGKey(config.seed)
  init_key, state_key = jax.random.split(key)

  def inputs(x_uint8, rng, training):
    aug_rng, deq_rng = jax.random.split(rng)
    if nll_weight:  # a density needs dequantised inputs
      x = multiscale.uniform_dequantize(deq_rng, x_uint8)
    else:
      x = data_lib.to_float(x_uint8)
    if training and config.augment:
      x = augment(aug_rng, x)
    return x - 0.5

  x_init = data_lib.to_float(train_ds.x[:config.init_batch_size]) - 0.5
  variables = jax.jit(model.init)({"params": init_key, "logdet": init_key}, x_init)
  params, model_state = train.split_variables(variables)
  mutable = list(model_state)
  optimizer = train_flow.make_optimizer(config)
  state = train.TrainState.create(params, optimizer, state_key, model_state)
  logging.info("classifier %s/%s: %d parameters, latent %s", config.model.name, config.head,
               sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)), model.latent_shape)

  def forward(params, model_state, x, rng):
    return model.apply({"params": params, **model_state}, x, rngs={"logdet": rng},
                       mutable=mutable)

  def loss_fn(params, model_state, batch, rng):
    in_rng, fwd_rng = jax.random.split(rng)
    x = inputs(batch["x"], in_rng, training=True)
    (logits, z, log_det), new_state = forward(params, model_state, x, fwd_rng)
    loss, metrics = clf_lib.hybrid_loss(logits, batch["y"], z, log_det, nll_weight=nll_weight)
    if not config.report_bits_per_dim:
      metrics.pop("bits_per_dim")
    return loss, (new_state, metrics)

  def metric_fn(params, model_state, batch):
    rng = jax.random.PRNGKey(0)  # fixed: the same test numbers at every evaluation
    x = inputs(batch["x"], rng, training=False)
    (logits, z, log_det), _ = forward(params, model_state, x, rng)
    out = {"accuracy": (jnp.argmax(logits, -1) == batch["y"]).astype(jnp.float32)}
    if config.report_bits_per_dim:
      out["bits_per_dim"] = clf_lib.nll_bits_per_dim(z, log_det)
    return out

  train_step = train.make_train_step(loss_fn, optimizer, mutable=True, donate=True)
  eval_step = train.make_eval_step(metric_fn)
  state, eval_metrics = train.train_loop(
      config, state, train_step, train_ds, workdir, eval_step=eval_step, eval_dataset=test_ds,
      mesh=train_flow.maybe_mesh(config), progress=config.get("progress", True))
  results = {"test_accuracy": eval_metrics["accuracy"], "step": int(state.step),
             "model": f"{config.model.name}/{config.head}", "wall_s": time.time() - t_start}
  if "bits_per_dim" in eval_metrics:
    results["test_bits_per_dim"] = eval_metrics["bits_per_dim"]
  train_flow.write_results(workdir, results)
  return results


FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  results = train_and_evaluate(FLAGS.config, FLAGS.workdir, FLAGS.data_dir)
  extra = (f", test bits/dim {results['test_bits_per_dim']:.4f}"
           if "test_bits_per_dim" in results else "")
  print(f"test accuracy {results['test_accuracy']:.4f}{extra} after {results['step']} steps "
        f"({results['model']}, {results['wall_s']:.1f} s)")


if __name__ == "__main__":
  runtime.configure()  # JAX's options as flags (--jax_compilation_cache_dir, ...)
  train_flow.define_flags(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                                       "classifier_smoke.py"))
  app.run(main)
