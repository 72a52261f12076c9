r"""Robustness evaluation benchmark: invjax vs torchattacks on the same weights and images (CPU).

The same `invjax.nets.cnn.SmallCNN` weights in both frameworks (`bench/torch_cnn.py`; the two
forwards are checked to agree), the first `--num_images` embedded test images, L_inf (or L2)
at `--epsilon`. Rows, each run by both libraries in the same process, one after the other:

  PGD-20               `attacks.gradient.pgd` (step epsilon/4, random start, no early stop)
                       vs `torchattacks.PGD` / `PGDL2` (same steps, step and start)
  AutoAttack standard  invjax `attacks.autoattack(version="standard")` vs
                       `torchattacks.AutoAttack(version="standard")`, end to end
  APGD-CE              `attacks.apgd(loss="ce")` vs `torchattacks.APGD(loss="ce")`
  Square               `attacks.square` vs `torchattacks.Square` (`--square_queries`)

For each: robust accuracy (on all images, clean mistakes count as broken), images/s (wall time
of the call after one warm-up call on the same batch: both sides run eagerly/compiled as their
users run them), the speed ratio invjax / torchattacks, and each side's first call (invjax:
compilation included). Target (issue 19): invjax >= 1.5x torchattacks end to end at the same
robust accuracy (+-0.5 points). On a shared CPU, pin both to the same core(s) and threads
(`taskset -c 0 ... --cpu_devices=0 --torch_threads=1`); `--notorch_warmup` times
torchattacks' first call (its warm-up only warms the allocator, a small share of a long run).

  PYTHONPATH=. .venv/bin/python bench/evaluation.py --num_images=100 --out=/tmp/eval.md
  PYTHONPATH=. .venv/bin/python bench/evaluation.py --num_images=32 --parts=apgd  # quick
  python bench/evaluation.py --parts=pgd,autoattack --cpu_devices=0 --torch_device=cuda  # a GPU

`--torch_device=auto` (the default) runs the torch side on CUDA when JAX itself runs on a GPU
and torch sees one, else on the CPU; the table's first line says which.

torchattacks is not in the test extra's dependencies (its own would replace the CPU torch):
`pip install --no-deps torchattacks`.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from bench import report
from bench import torch_cnn
from invjax import data as data_lib
from invjax import parallel

flags.DEFINE_integer("num_images", 100, "Embedded test images attacked.")
flags.DEFINE_float("epsilon", 8 / 255, "Budget.")
flags.DEFINE_enum("norm", "linf", ["linf", "l2"], "Norm.")
flags.DEFINE_integer("cnn_steps", 300, "Training steps of the SmallCNN.")
flags.DEFINE_integer("square_queries", 5000, "Queries of the Square rows.")
flags.DEFINE_integer("square_min_buffer", 0, "min_buffer of the invjax Square row (batch "
                     "compaction); 0: the library default; >= the batch: no compaction.")
flags.DEFINE_list("parts", ["autoattack", "apgd", "square"], "Rows to run (also: pgd).")
flags.DEFINE_list("sharded", ["pgd", "apgd", "square"], "invjax rows whose batch is split over the "
                  "JAX CPU devices (parallel.call_sharded); the others run on one device "
                  "(the AutoAttack row always does: autoattack drives its attacks itself).")
flags.DEFINE_integer("cpu_devices", -1, "JAX CPU devices (set before JAX starts): -1 one per "
                     "core, 0 JAX's default (one). invjax rows split their batch over them.")
flags.DEFINE_integer("torch_threads", 0, "torch intra-op threads (0: torch's default).")
flags.DEFINE_enum("torch_device", "auto", ["auto", "cpu", "cuda"], "Device of the torch side; "
                  "auto: cuda when JAX runs on a GPU and torch sees one, else cpu.")
flags.DEFINE_bool("torch_warmup", True, "Warm torchattacks up with a first call (its time "
                  "is the first-call column); without, the first call is the one timed.")
flags.DEFINE_string("out", None, "Also write the markdown table to this file.")
FLAGS = flags.FLAGS


def _timed(fn, warmup=True):
  """(output, seconds of the second call, seconds of the first: compilation included)."""
  t0 = time.perf_counter()
  if warmup:
    fn()  # warm-up: compilation (invjax), allocator (torch)
  t1 = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t1, t1 - t0


def torch_device_for(flag: str) -> str:
  """"cpu" or "cuda" for `--torch_device` (auto: cuda when JAX and torch both see a GPU)."""
  import torch  # pylint: disable=g-import-not-at-top
  if flag == "auto":
    return "cuda" if jax.devices()[0].platform == "gpu" and torch.cuda.is_available() else "cpu"
  if flag == "cuda" and not torch.cuda.is_available():
    raise app.UsageError("--torch_device=cuda but torch sees no CUDA device")
  return flag


def run(num_images, epsilon, norm, cnn_steps, square_queries, parts, sharded=(),
        square_min_buffer=None, torch_warmup=True, torch_device="cpu") -> str:
  import torch  # pylint: disable=g-import-not-at-top
  import torchattacks  # pylint: disable=g-import-not-at-top
  from invjax.attacks import autopgd as apgd_lib  # pylint: disable=g-import-not-at-top
  from invjax.attacks import ensemble as aa_lib  # pylint: disable=g-import-not-at-top
  from invjax.attacks import gradient as pgd_lib  # pylint: disable=g-import-not-at-top
  from invjax.attacks import square_attack as square_lib  # pylint: disable=g-import-not-at-top

  model, variables = torch_cnn.train_small_cnn(cnn_steps)
  test = data_lib.load("cifar10_mini", "test")
  x = data_lib.to_float(test.x[:num_images])
  y = jnp.asarray(test.y[:num_images])
  logits_fn, tmodel, xt, yt, diff = torch_cnn.twins(model, variables, x, y,
                                                         torch_device)
  clean = float(np.mean(np.argmax(np.asarray(logits_fn(x)), 1) == np.asarray(y)))
  ta_norm = "Linf" if norm == "linf" else "L2"
  key = jax.random.PRNGKey(0)

  def synced(fn):  # torch on CUDA returns before the kernels finish
    def call():
      out = fn()
      if torch_device == "cuda":
        torch.cuda.synchronize()
      return out
    return call

  def robust_torch(x_adv):
    with torch.no_grad():
      return float((tmodel(x_adv).argmax(1) == yt).float().mean())

  def robust_invjax(x_adv):
    return float(np.mean(np.argmax(np.asarray(logits_fn(x_adv)), 1) == np.asarray(y)))

  def invjax_call(part, attack):
    def call():
      if part in sharded:
        res = parallel.call_sharded(lambda xb, yb: attack(xb, yb), x, y)
      else:
        res = attack(x, y)
      jax.block_until_ready(res.x_adv)
      return res.x_adv
    return call

  pgd_step = epsilon / 4
  ta_pgd = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
  rows = {
      "pgd": ("PGD-20 (step eps/4, random start)",
              invjax_call("pgd", lambda xb, yb: pgd_lib.pgd(
                  logits_fn, xb, yb, key=key, epsilon=epsilon, step_size=pgd_step,
                  num_steps=20, norm=norm, random_start=True, early_stop=False)),
              lambda: ta_pgd(tmodel, eps=epsilon, alpha=pgd_step, steps=20,
                             random_start=True)(xt, yt)),
      "autoattack": ("AutoAttack standard",
                     lambda: aa_lib.autoattack(logits_fn, x, y, key=key, epsilon=epsilon,
                                               norm=norm, version="standard").x_adv,
                     lambda: torchattacks.AutoAttack(tmodel, norm=ta_norm, eps=epsilon,
                                                     version="standard", n_classes=10,
                                                     seed=0)(xt, yt)),
      "apgd": ("APGD-CE (100 steps)",
               invjax_call("apgd", lambda xb, yb: apgd_lib.apgd(
                   logits_fn, xb, yb, key=key, epsilon=epsilon, norm=norm, loss="ce",
                   num_steps=100)),
               lambda: torchattacks.APGD(tmodel, norm=ta_norm, eps=epsilon, steps=100,
                                         n_restarts=1, loss="ce", seed=0)(xt, yt)),
      "square": (f"Square ({square_queries} queries)",
                 invjax_call("square", lambda xb, yb: square_lib.square(
                     logits_fn, xb, yb, key=key, epsilon=epsilon, norm=norm,
                     num_queries=square_queries, min_buffer=square_min_buffer)),
                 lambda: torchattacks.Square(tmodel, norm=ta_norm, eps=epsilon,
                                             n_queries=square_queries, n_restarts=1,
                                             seed=0)(xt, yt)),
  }
  lines = [f"SmallCNN ({cnn_steps} steps), {num_images} embedded test images, clean accuracy "
           f"{clean:.3f}, {norm} eps={epsilon:.4g}; max |logit difference| invjax vs torch "
           f"{diff:.1e}; {jax.device_count()} JAX device(s), torch threads "
           f"{torch.get_num_threads()}, torch device {torch_device} (torch {torch.__version__}); "
           f"torchattacks {torchattacks.__version__}", "",
           "| attack | invjax robust acc | torchattacks robust acc | invjax images/s | "
           "torchattacks images/s | speed-up | invjax first call s | torchattacks first "
           "call s |", "|---|---|---|---|---|---|---|---|"]
  for part in parts:
    name, ours, theirs = rows[part]
    x_ours, t_ours, first_ours = _timed(ours)
    x_theirs, t_theirs, first_theirs = _timed(synced(theirs), torch_warmup)
    lines.append(f"| {name} | {robust_invjax(x_ours):.3f} | {robust_torch(x_theirs):.3f} | "
                 f"{num_images / t_ours:.1f} | {num_images / t_theirs:.1f} | "
                 f"{t_theirs / t_ours:.2f}x | {first_ours:.1f} | "
                 f"{first_theirs if torch_warmup else t_theirs:.1f} |")
    print(lines[-1], file=sys.stderr, flush=True)
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  if FLAGS.torch_threads:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(FLAGS.torch_threads)
  if FLAGS.cpu_devices:
    parallel.cpu_cores_as_devices(None if FLAGS.cpu_devices < 0 else FLAGS.cpu_devices)
  report.emit(run(FLAGS.num_images, FLAGS.epsilon, FLAGS.norm, FLAGS.cnn_steps,
                  FLAGS.square_queries, FLAGS.parts, FLAGS.sharded,
                  FLAGS.square_min_buffer or None, FLAGS.torch_warmup,
                  torch_device_for(FLAGS.torch_device)), FLAGS.out)


if __name__ == "__main__":
  app.run(main)
