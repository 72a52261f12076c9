r"""Where one PGD step spends its time, invjax vs PyTorch, on one CPU core.

Both sides run the same L_inf PGD steps (input gradient only: frozen weights in torch) of
the same `SmallCNN` weights, pinned to one core (`--core`; torch with one thread, invjax
with one JAX CPU device, so `invjax._src.compilation.jit` keeps XLA:CPU's YNNPACK convolutions,
as on each device of the batch split that `bench/attacks.py` measures). Each side's
profiler (JAX's trace of the XLA ops; `torch.profiler`'s self time of the aten ops) splits
the step into

  * library kernels: the 12 convolutions (6 forward, 6 input gradients) and the dense layer
    (YNNPACK in invjax, oneDNN / MKL in PyTorch), with the convolutions' GFLOP/s counted
    from the layer shapes;
  * everything else: normalisation, bias, ReLU and max pooling and their gradients, the
    loss, the sign step and projection (XLA's fused element-wise kernels in invjax; aten's
    element-wise ops, pooling and the autograd engine in PyTorch).

A large matrix product on the same core gives each library's reference rate. Wall times
(without the profiler) and profiled times are medians of `--repeats` rounds, the two sides in
turn, so that a slow spell of a shared machine hits both.

  python bench/pgd_profile.py --batch=64 --out=/tmp/pgd_profile.md
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags

flags.DEFINE_integer("batch", 64, "Images per step.")
flags.DEFINE_integer("steps", 5, "PGD steps per timed call.")
flags.DEFINE_integer("repeats", 5, "Timed rounds (median reported).")
flags.DEFINE_integer("core", 0, "The CPU core both sides are pinned to.")
flags.DEFINE_string("out", None, "Also write the markdown table to this file.")
FLAGS = flags.FLAGS

EPS = 8 / 255
STEP = 2 / 255
# XLA ops that run in a library kernel (YNNPACK / oneDNN / Eigen / a custom call).
_JAX_LIBRARY = re.compile(r"^(ynn_fusion|xnn_fusion|onednn|convolution|conv_general_dilated|dot"
                          r"|custom-call|custom_call)")
# Profiler events that are not one XLA op (wrappers, Python frames, the runtime).
_JAX_NOT_AN_OP = re.compile(r"(::|^\$|^end: |^while|^conditional|^call\b|^Pjit|^Thunk|"
                            r"^CommonPjRt|^ExecuteHelper)")
_TORCH_LIBRARY = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::addmm",
                  "aten::mm", "aten::_convolution_mode", "aten::thnn_conv2d",
                  "aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward")


def _pin(core: int) -> None:
  """Restricts this process (and the threads it starts later) to `core`."""
  if not hasattr(os, "sched_setaffinity"):
    raise SystemExit("this benchmark pins itself to one core: needs os.sched_setaffinity (Linux)")
  if core not in os.sched_getaffinity(0):
    raise SystemExit(f"--core={core} is not available to this process "
                     f"(allowed: {sorted(os.sched_getaffinity(0))})")
  os.sched_setaffinity(0, {core})


def conv_flops(variables, image_size: int, batch: int) -> float:
  """FLOPs of SmallCNN's convolutions, forward plus input gradient, for one step."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  params = variables["params"]
  convs = sorted([k for k in params if k.startswith("Conv_")], key=lambda k: int(k[5:]))
  total = 0.0
  for i, name in enumerate(convs):
    kh, kw, cin, cout = np.asarray(params[name]["kernel"]).shape
    size = image_size // 2 ** (i // 2)  # two convolutions per stage, then a 2x2 pool
    total += 2 * 2.0 * batch * size * size * kh * kw * cin * cout  # forward + input grad
  return total


def _median(xs):
  xs = sorted(xs)
  return xs[len(xs) // 2]


def _jax_op_times(fn, steps: int):
  """Per-step ms of the PGD loop from a JAX profiler trace of one `fn()`.

  {'loop': the `while` op, 'library': its library-kernel ops, 'other': its other ops};
  the model check and final evaluation outside the loop are left out.
  """
  import glob  # pylint: disable=g-import-not-at-top
  import gzip  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as tmp:
    jax.profiler.start_trace(tmp)
    fn()
    jax.profiler.stop_trace()
    traces = glob.glob(os.path.join(tmp, "**", "*.trace.json.gz"), recursive=True)
    if not traces:
      raise SystemExit("the JAX profiler wrote no trace.json.gz: this jaxlib's profiler "
                       "output differs from the one this script reads")
    with gzip.open(traces[0]) as f:
      events = json.load(f)["traceEvents"]
  ops = [e for e in events if e.get("ph") == "X" and e.get("name")]
  loops = [e for e in ops if re.match(r"^while(\.\d+)?$", e["name"])]
  if not loops:
    raise SystemExit("no `while` op in the JAX trace (this jaxlib's CPU runtime does not "
                     "annotate its ops): cannot split the step")
  loop = max(loops, key=lambda e: e["dur"])  # the PGD step loop
  begin, end = loop["ts"], loop["ts"] + loop["dur"]
  sums = {"library": 0.0, "other": 0.0, "loop": loop["dur"] / 1e3}
  for e in ops:
    if (e is loop or (e["pid"], e["tid"]) != (loop["pid"], loop["tid"])
        or not begin <= e["ts"] <= end or _JAX_NOT_AN_OP.search(e["name"])):
      continue
    sums["library" if _JAX_LIBRARY.match(e["name"]) else "other"] += e["dur"] / 1e3
  return {k: v / steps for k, v in sums.items()}


def _torch_op_times(fn, steps: int):
  """{'library': ms, 'other': ms, 'pooling': ms} per step from `torch.profiler` self times."""
  from torch import profiler  # pylint: disable=g-import-not-at-top

  with profiler.profile(activities=[profiler.ProfilerActivity.CPU]) as prof:
    fn()
  sums = {"library": 0.0, "other": 0.0, "pooling": 0.0}
  for avg in prof.key_averages():
    ms = avg.self_cpu_time_total / 1e3
    if avg.key in _TORCH_LIBRARY:
      sums["library"] += ms
    else:
      sums["other"] += ms
      if "max_pool" in avg.key:
        sums["pooling"] += ms
  sums["loop"] = sums["library"] + sums["other"]
  return {k: v / steps for k, v in sums.items()}


def _matmul_gflops(repeats: int):
  """GFLOP/s of a 1024^3 float32 matrix product in XLA (jit) and torch, best of `repeats`."""
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  n = 1024
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
  mm = jax.jit(lambda u: u @ u)
  at = torch.randn(n, n)
  best = {"jax": float("inf"), "torch": float("inf")}
  mm(a).block_until_ready()
  torch.mm(at, at)
  for _ in range(repeats):
    t0 = time.perf_counter()
    mm(a).block_until_ready()
    best["jax"] = min(best["jax"], time.perf_counter() - t0)
    t0 = time.perf_counter()
    torch.mm(at, at)
    best["torch"] = min(best["torch"], time.perf_counter() - t0)
  return {k: 2.0 * n ** 3 / t / 1e9 for k, t in best.items()}


def profile(batch: int, steps: int, repeats: int) -> str:
  """Runs both sides (the process must already be pinned) and returns the markdown."""
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  from bench import torch_cnn  # pylint: disable=g-import-not-at-top
  from invjax._src import compilation  # pylint: disable=g-import-not-at-top
  from invjax import data as data_lib  # pylint: disable=g-import-not-at-top
  from invjax.attacks import gradient  # pylint: disable=g-import-not-at-top
  from invjax.nets import cnn  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(1)
  model = cnn.SmallCNN()
  variables = cnn.init(model, jax.random.PRNGKey(0))  # timing does not depend on training
  test = data_lib.load("cifar10_mini", "test")
  if batch > len(test.y):
    raise SystemExit(f"--batch={batch} exceeds the {len(test.y)} embedded test images")
  x = data_lib.to_float(test.x[:batch])
  y = jax.numpy.asarray(test.y[:batch])
  logits_fn, tmodel, xt, yt, diff = torch_cnn.twins(model, variables, x, y)

  def run_invjax():
    res = gradient.pgd(logits_fn, x, y, key=jax.random.PRNGKey(0), epsilon=EPS,
                       step_size=STEP, num_steps=steps, norm="linf", random_start=True,
                       early_stop=False)
    jax.block_until_ready(res.x_adv)

  def run_torch():
    torch_cnn.pgd_linf(tmodel, xt, yt, epsilon=EPS, step_size=STEP, num_steps=steps)

  def run_torch_and_evaluate():  # + the final evaluation invjax's result includes
    adv = torch_cnn.pgd_linf(tmodel, xt, yt, epsilon=EPS, step_size=STEP, num_steps=steps)
    with torch.no_grad():
      tmodel(adv)

  walls = {"invjax": [], "torch": []}
  run_invjax()  # compile
  run_torch()
  for _ in range(repeats):
    for name, fn in (("invjax", run_invjax), ("torch", run_torch_and_evaluate)):
      t0 = time.perf_counter()
      fn()
      walls[name].append((time.perf_counter() - t0) * 1e3 / steps)
  wall = {k: _median(v) for k, v in walls.items()}
  profiled = {"invjax": [], "torch": []}
  for _ in range(repeats):  # one profiled call of each per round; medians per entry
    profiled["invjax"].append(_jax_op_times(run_invjax, steps))
    profiled["torch"].append(_torch_op_times(run_torch, steps))
  ops = {side: {key: _median([r[key] for r in rounds]) for key in rounds[0]}
         for side, rounds in profiled.items()}
  peak = _matmul_gflops(repeats)
  gflop = conv_flops(variables, x.shape[1], batch) / 1e9

  def row(label, key, fmt="{:.1f}"):
    a, b = ops["invjax"][key], ops["torch"][key]
    return f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {b / a:.2f}x |"

  options = compilation.compiler_options(1) or "none (YNNPACK convolutions)"
  lines = [
      f"PGD L_inf step (input gradient) of SmallCNN, batch {batch}, {steps} steps per call, "
      f"pinned to CPU core {FLAGS.core} of {os.cpu_count()}; jax {jax.__version__} (compiler "
      f"options {options}), torch {torch.__version__} (1 thread); max |logit diff| {diff:.1e}; "
      f"median of {repeats} rounds", "",
      "| per PGD step | invjax (XLA:CPU) | PyTorch (eager) | PyTorch / invjax |",
      "|---|---|---|---|",
      row("PGD step (profiled: the loop's ops), ms", "loop"),
      f"| whole call / {steps} (wall, no profiler; invjax also checks the model and both "
      f"evaluate the result), ms | {wall['invjax']:.1f} | {wall['torch']:.1f} | "
      f"{wall['torch'] / wall['invjax']:.2f}x |",
      row("convolutions + dense (library kernels), ms", "library"),
      f"| convolutions, GFLOP/s ({gflop:.2f} GFLOP per step) | "
      f"{gflop / ops['invjax']['library'] * 1e3:.1f} | "
      f"{gflop / ops['torch']['library'] * 1e3:.1f} | |",
      row("everything else (element-wise, pooling, loss, step), ms", "other"),
      f"| of which max pooling and its gradient (PyTorch's aten ops), ms | (fused) | "
      f"{ops['torch']['pooling']:.1f} | |",
      f"| 1024^3 matrix product on the same core, GFLOP/s | {peak['jax']:.1f} | "
      f"{peak['torch']:.1f} | |",
  ]
  return "\n".join(lines)


def main(argv):
  del argv
  _pin(FLAGS.core)  # before JAX or torch start their thread pools
  from bench import report  # pylint: disable=g-import-not-at-top
  report.emit(profile(FLAGS.batch, FLAGS.steps, FLAGS.repeats) + "\n", FLAGS.out)


if __name__ == "__main__":
  app.run(main)
