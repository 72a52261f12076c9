r"""Benchmark: invjax's linear SVM vs LIBLINEAR on the same feature matrix (CPU by default).

Measures, for LIBLINEAR `-s 1 -c 1 -B -1` (its command-line defaults, `-e 0.1`) and for
`invjax.passeurs.svm.fit` (squared hinge, C = 1, no bias):

* end to end: from a numpy float array to a fitted model. For LIBLINEAR this includes building its
  `problem` (from the dense numpy array, the plain API path; the faster scipy-CSR path is timed too
  and reported as its own row); for invjax it includes the host-to-device copy and, on the first
  call, the XLA compilation (reported separately);
* solver only: LIBLINEAR's `train` on a built problem; invjax's second call (compiled);
* primal objective (0.5 ||w_c||^2 + C sum_i max(0, 1 - y_i w_c . x_i)^2, summed over classes,
  computed in float64 numpy for every model), train accuracy, prediction agreement.

Optionally LIBLINEAR is also run with a tight tolerance (`--ref_eps`, e.g. 0.001) as the objective
reference. Data: a synthetic CNN-like matrix (non-negative, ReLU of a correlated low-rank signal
plus noise, 10 partially separable classes), or `--features file.npz` with arrays `features`
[n, d] and `labels` [n].

  .venv/bin/python bench/svm.py                  # 50,000 x 1,280, 10 classes
  .venv/bin/python bench/svm.py --n 5000 --d 256                  # quick
  .venv/bin/python bench/svm.py --features feats.npz --out svm_bench.md
"""
from __future__ import annotations

import os
import time

from absl import app
from absl import flags
import numpy as np

flags.DEFINE_integer("n", 50_000, "Samples of the synthetic matrix.")
flags.DEFINE_integer("d", 1_280, "Feature dimension of the synthetic matrix.")
flags.DEFINE_integer("classes", 10, "Classes of the synthetic matrix.")
flags.DEFINE_integer("seed", 0, "Seed of the synthetic matrix.")
flags.DEFINE_float("separation", 0.3, "Class-mean scale of the synthetic matrix (separability).")
flags.DEFINE_string("features", None, ".npz with `features` [n, d] and `labels` [n] (real run).")
flags.DEFINE_float("C", 1.0, "SVM cost C.")
flags.DEFINE_float("tol", None, "invjax tolerance (default: the library's).")
flags.DEFINE_float("ref_eps", None, "Also run LIBLINEAR with this -e as the objective reference.")
flags.DEFINE_bool("dense_problem", True, "Time LIBLINEAR's problem() from the dense array.")
flags.DEFINE_bool("liblinear", True, "Run the LIBLINEAR rows (single-threaded CPU: about 3 "
                  "minutes at the full size; --noliblinear on an accelerator run).")
flags.DEFINE_string("out", None, "Write the markdown table to this file.")
FLAGS = flags.FLAGS


def synthetic_features(n, d, classes, seed, separation=0.3):
  """CNN-like features: relu(latent @ mixing + noise - shift), latent = class mean + N(0, I_64)."""
  rng = np.random.default_rng(seed)
  rank = 64
  labels = rng.integers(0, classes, n).astype(np.int32)
  means = separation * rng.normal(size=(classes, rank))
  latent = rng.normal(size=(n, rank)) + means[labels]
  mixing = rng.normal(size=(rank, d)) / np.sqrt(rank)
  pre = latent @ mixing + 0.7 * rng.normal(size=(n, d)) - 0.5
  feats = (0.4 * np.maximum(pre, 0.0)).astype(np.float32)
  return feats, labels


def primal_objective(w, b, x, y, c):
  """float64 LIBLINEAR objective summed over the one-vs-rest problems."""
  w = np.asarray(w, np.float64)
  b = np.asarray(b, np.float64)
  total = 0.5 * (np.sum(w * w) + np.sum(b * b))
  scores = x @ w.T.astype(np.float32)          # float32 product, float64 accumulation below
  for k in range(w.shape[0]):
    sign = np.where(y == k, 1.0, -1.0)
    h = np.maximum(1.0 - sign * (scores[:, k].astype(np.float64) + b[k]), 0.0)
    total += c * np.sum(h * h)
  return float(total)


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  try:
    from liblinear import liblinearutil as ll  # pylint: disable=g-import-not-at-top
  except ImportError:  # e.g. a GPU machine without the test extra: invjax's rows only
    ll = None
  import scipy.sparse  # pylint: disable=g-import-not-at-top
  from invjax.passeurs import svm  # pylint: disable=g-import-not-at-top

  if FLAGS.features:
    data = np.load(FLAGS.features)
    x, y = np.asarray(data["features"], np.float32), np.asarray(data["labels"], np.int32)
    source = os.path.basename(FLAGS.features)
  else:
    x, y = synthetic_features(FLAGS.n, FLAGS.d, FLAGS.classes, FLAGS.seed, FLAGS.separation)
    source = "synthetic CNN-like"
  n, d = x.shape
  k = int(y.max()) + 1
  c = FLAGS.C
  print(f"data: {source}, {n} x {d}, {k} classes, {100 * np.mean(x > 0):.0f}% non-zero, "
        f"device {jax.devices()[0].platform}, CPU cores {os.cpu_count()}", flush=True)
  rows = []
  header = [f"Linear SVM, squared hinge, C={c}, no bias, one-vs-rest; {source} {n} x {d}, "
            f"{k} classes; {jax.devices()[0].platform}, {os.cpu_count()} CPU cores.", "",
            "| solver | end to end (s) | solver only (s) | primal objective | train acc | "
            "same pred. as invjax | invjax e2e speed-up | notes |",
            "|---|---|---|---|---|---|---|---|"]
  lines = list(header)
  print("\n".join(header), flush=True)

  def add(name, e2e, solver, w, b, extra=""):
    """Scores a model and prints its table row at once (the table survives an interrupted run)."""
    pred = np.argmax(x @ np.asarray(w, np.float32).T + np.asarray(b, np.float32), axis=1)
    obj = primal_objective(w, b, x, y, c)
    rows.append(dict(e2e=e2e, pred=pred))
    lines.append(f"| {name} | {e2e:.2f} | {solver:.2f} | {obj:.7g} | {100 * np.mean(pred == y):.2f}% | "
                 f"{100 * np.mean(pred == rows[0]['pred']):.2f}% | {e2e / rows[0]['e2e']:.1f}x | "
                 f"{extra} |")
    print(lines[-1], flush=True)

  # ---- invjax: first call (compile + copy + solve), then a second, compiled call.
  t0 = time.perf_counter()
  params, info = svm.fit(x, y, C=c, tol=FLAGS.tol, return_info=True)
  jax.block_until_ready(params)
  first = time.perf_counter() - t0
  xd = jax.block_until_ready(jnp.asarray(x))
  t0 = time.perf_counter()
  params, info = svm.fit(xd, y, C=c, tol=FLAGS.tol, return_info=True)
  jax.block_until_ready(params)
  solve = time.perf_counter() - t0
  t0 = time.perf_counter()
  params = jax.block_until_ready(svm.fit(x, y, C=c, tol=FLAGS.tol))
  warm_e2e = time.perf_counter() - t0
  extra = (f"Newton its max {int(np.max(info.iterations))}, CG its max "
           f"{int(np.max(info.inner_iterations))}, converged {bool(np.all(info.converged))}; "
           f"first call incl. compile {first:.2f}s")
  add("invjax `svm.fit` (newton)", warm_e2e, solve, params.w, params.b, extra)

  if ll is None or not FLAGS.liblinear:
    why = "--noliblinear" if ll is not None else "liblinear-official is not installed"
    lines.append(f"\nLIBLINEAR rows skipped: {why}.")
    print(lines[-1], flush=True)
  else:
    _liblinear_rows(ll, scipy.sparse, x, y, c, k, d, add)
  table = "\n".join(lines)
  print()
  print(table)
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      f.write(table + "\n")


def _liblinear_rows(ll, sparse, x, y, c, k, d, add):
  """LIBLINEAR: build the problem (dense numpy path and CSR path), train with defaults."""
  from invjax.passeurs import svm  # pylint: disable=g-import-not-at-top
  yd = y.astype(np.float64)
  t0 = time.perf_counter()
  prob_csr = ll.problem(yd, sparse.csr_matrix(x.astype(np.float64)))
  build_csr = time.perf_counter() - t0
  build_dense = None
  if FLAGS.dense_problem:
    del prob_csr
    t0 = time.perf_counter()
    prob = ll.problem(yd, x.astype(np.float64))
    build_dense = time.perf_counter() - t0
  else:
    prob = prob_csr
  t0 = time.perf_counter()
  model = ll.train(prob, f"-s 1 -c {c} -B -1 -q")
  train_default = time.perf_counter() - t0
  w_ll = svm.liblinear_weights(model, k, d)
  b0 = np.zeros(k)
  if build_dense is not None:
    add("LIBLINEAR `-s 1` (problem from dense numpy)", build_dense + train_default, train_default,
        w_ll, b0, f"problem() {build_dense:.2f}s")
  add("LIBLINEAR `-s 1` (problem from scipy CSR)", build_csr + train_default, train_default,
      w_ll, b0, f"problem() {build_csr:.2f}s")
  if FLAGS.ref_eps:
    t0 = time.perf_counter()
    ref = ll.train(prob, f"-s 1 -c {c} -B -1 -e {FLAGS.ref_eps} -q")
    train_ref = time.perf_counter() - t0
    add(f"LIBLINEAR `-s 1 -e {FLAGS.ref_eps}` (reference)", build_csr + train_ref, train_ref,
        svm.liblinear_weights(ref, k, d), b0, f"problem() CSR {build_csr:.2f}s")


if __name__ == "__main__":
  app.run(main)
