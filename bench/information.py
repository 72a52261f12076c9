r"""Benchmark: invjax's mutual-information estimators against closed forms (CPU by default).

Correlated Gaussians `x, y` in d dimensions with correlation rho per coordinate have
`I(x; y) = -d/2 log(1 - rho^2)` nats. For each (d, rho): the KSG estimator
(`invjax.information.ksg_mutual_information`, k = 3) on n samples, mean and standard deviation
over `--draws` draws; then the variational bounds (InfoNCE, NWJ, MINE; `train_critic` with a
concat critic) at d = 2, rho = 0.8, on held-out batches. Prints one markdown table each.

  PYTHONPATH=. .venv/bin/python bench/information.py
  PYTHONPATH=. .venv/bin/python bench/information.py --draws 3 --steps 100   # quick
"""
from __future__ import annotations

import time

from absl import app
from absl import flags
import jax
import numpy as np

from invjax.information import critics
from invjax.information import ksg
from invjax.information import variational

flags.DEFINE_integer("n", 2000, "samples per KSG draw")
flags.DEFINE_integer("draws", 10, "KSG draws per (d, rho)")
flags.DEFINE_integer("steps", 300, "critic training steps")
flags.DEFINE_integer("batch", 128, "critic batch size")
FLAGS = flags.FLAGS
CASES = ((1, 0.5), (1, 0.7), (1, 0.9), (2, 0.5), (2, 0.8), (2, 0.9))


def gaussian_pair(key, n: int, d: int, rho: float):
  kx, kn = jax.random.split(key)
  x = jax.random.normal(kx, (n, d))
  y = rho * x + np.sqrt(1 - rho ** 2) * jax.random.normal(kn, (n, d))
  return np.asarray(x), np.asarray(y), -0.5 * d * np.log(1 - rho ** 2)


def main(_):
  lines = ["| d | rho | true MI (nats) | KSG mean | bias | std |", "|---|---|---|---|---|---|"]
  t0 = time.time()
  for d, rho in CASES:
    est = []
    for i in range(FLAGS.draws):
      x, y, true = gaussian_pair(jax.random.PRNGKey(100 * d + i), FLAGS.n, d, rho)
      est.append(float(ksg.ksg_mutual_information(x, y, k=3)))
    m = float(np.mean(est))
    lines.append(f"| {d} | {rho} | {true:.3f} | {m:.3f} | {100 * (m / true - 1):+.1f}% | "
                 f"{np.std(est):.3f} |")
  print(f"KSG (k = 3, n = {FLAGS.n}, {FLAGS.draws} draws; {time.time() - t0:.0f} s)\n")
  print("\n".join(lines) + "\n")
  x, y, true = gaussian_pair(jax.random.PRNGKey(7), 8000, 2, 0.8)
  lines = ["| bound | estimate | error | std over held-out batches |", "|---|---|---|---|"]
  t0 = time.time()
  for bound in variational.BOUNDS:
    out = variational.train_critic(critics.ConcatCritic(hidden=(32, 32)), x, y,
                                   key=jax.random.PRNGKey(0), bound=bound,
                                   num_steps=FLAGS.steps, batch_size=FLAGS.batch,
                                   learning_rate=1e-3)
    e = float(out.estimate)
    lines.append(f"| {bound} | {e:.3f} | {100 * (e / true - 1):+.1f}% | "
                 f"{float(np.std(np.asarray(out.test_bounds))):.3f} |")
  print(f"Variational bounds (d = 2, rho = 0.8, true {true:.3f} nats; concat critic, "
        f"{FLAGS.steps} steps of batch {FLAGS.batch}; {time.time() - t0:.0f} s)\n")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
