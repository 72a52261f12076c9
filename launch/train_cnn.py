r"""A CIFAR-10 CNN baseline (`invjax.nets.parseval_cnn`), plain or as a Parseval network.

`invjax.train.recipes.train_cnn` with the optimiser of `config` (and, with
`config.parseval`, `invjax.robust.parseval.parseval_retraction` chained after it); then the
singular values of the constrained layers. Writes `metrics.jsonl`, `checkpoints/` and
`results.json` and `model.json` (`invjax.train.recipes.restore_cnn` rebuilds the network) in
`--workdir`; relaunching the same command resumes.

  python -m launch.train_cnn --config=launch/configs/cnn.py:smoke,parseval \
      --workdir=/tmp/cnn_smoke_parseval
  python -m launch.train_cnn --config=launch/configs/cnn.py:cpu,parseval \
      --workdir=runs/cnn_cifar10_cpu_parseval --data_dir=../shared/data/cifar10
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Dict

if __package__ in (None, ""):  # `python launch/train_cnn.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
import jax
import optax

from invjax import parallel
from invjax import train
from invjax._src import io
from invjax.nets import parseval_cnn
from invjax.robust import parseval
from invjax.train import recipes
from launch import runtime


def train_and_evaluate(config, workdir: str, data_dir: str | None = None) -> Dict[str, Any]:
  """Trains the CNN of `config` in `workdir` (resuming); returns and writes its results."""
  t_start = time.time()
  train_ds, test_ds = runtime.load_splits(config, data_dir)
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.model.items()}
  model = parseval_cnn.ParsevalCNN(num_classes=config.num_classes, **kwargs)
  os.makedirs(workdir, exist_ok=True)
  io.write_json(os.path.join(workdir, recipes.MODEL_FILE),
                recipes.cnn_spec("parseval_cnn", num_classes=config.num_classes, **kwargs))
  optimizer = train.make_optimizer(**train.optimizer_kwargs(config))
  if config.parseval:
    optimizer = optax.chain(optimizer, parseval.parseval_retraction(
        key=jax.random.PRNGKey(config.seed + 1), beta=config.retraction.beta,
        row_fraction=config.retraction.row_fraction))
  variables, accuracy = recipes.train_cnn(
      model, train_ds, test_ds, workdir, optimizer=optimizer, augment=config.augment,
      mesh=parallel.maybe_data_mesh(config.data_parallel), progress=config.progress,
      noise_sigma=config.noise_sigma, **train.loop_kwargs(config))  # with config.seed
  singular = parseval.layer_singular_values(variables["params"])
  results = {
      "test_accuracy": float(accuracy), "parseval": bool(config.parseval),
      "step": int(config.num_steps),
      "max_singular_value": max(float(s.max()) for s in singular.values()),
      "min_singular_value": min(float(s.min()) for s in singular.values()),
      "layers": {k: [float(s.max()), float(s.min())] for k, s in singular.items()},
      "wall_s": time.time() - t_start}
  io.write_json(os.path.join(workdir, "results.json"), results)
  return results


FLAGS = flags.FLAGS


def main(argv):
  runtime.start(argv)
  r = train_and_evaluate(FLAGS.config, FLAGS.workdir, FLAGS.data_dir)
  kind = "parseval" if r["parseval"] else "plain"
  runtime.echo(f"test accuracy {r['test_accuracy']:.4f} after {r['step']} steps ({kind}); singular "
               f"values in [{r['min_singular_value']:.4f}, {r['max_singular_value']:.4f}] "
               f"({r['wall_s']:.1f} s)")


if __name__ == "__main__":
  runtime.configure()  # JAX's options as flags (--jax_compilation_cache_dir, ...)
  runtime.define_flags("cnn.py:smoke")
  app.run(main)
