r"""Benchmark: gradients through convolutions inside `lax` loops, `invjax._src.conv` vs `lax.conv`.

XLA:CPU compiles the input gradient of `lax.conv_general_dilated` inside a loop body to a
naive loop nest (see `invjax/_src/conv.py`); `invjax._src.conv.conv_general_dilated` keeps it on the
Eigen kernels. The peer is the same code with `INVJAX_CONV_PRIMITIVE=0` (plain lax), built in
the same process (the switch is read when a function is traced) and timed in turn with it,
`--repeats` rounds; the table gives medians. Every pair is checked to return the same values.

Workloads, on `invjax.nets.cnn.SmallCNN` (random weights; CIFAR-size inputs, `--batch`):
  * PGD-10 L_inf in one `lax.while_loop` (`unroll=False`, the CPU default for invjax networks)
    and unrolled (`unroll=True`, the CPU default for models on lax's convolution);
  * Carlini-Wagner L2, 2 binary-search steps x 10 Adam steps (a `while_loop`);
  * `robust.lipschitz.local_lipschitz`, 10 power iterations (JVP + VJP in a `fori_loop`);
and one training step (value and gradient of the NLL) of the smoke i-ResNet
(`invjax.flows.iresnet.smoke()`: spectral-norm power iterations and the log-det series
differentiate convolutions inside loops).

  .venv/bin/python bench/conv_loops.py --out /tmp/conv_loops.md
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
from invjax._src import compilation
from invjax._src import conv
from invjax.attacks import cw
from invjax.attacks import gradient
from invjax.flows import iresnet
from invjax.nets import cnn
from invjax.robust import lipschitz

flags.DEFINE_integer("batch", 32, "Images per call.")
flags.DEFINE_integer("repeats", 3, "Interleaved timing rounds (median reported).")
flags.DEFINE_string("out", None, "Also write the markdown table to this file.")
FLAGS = flags.FLAGS


def _workloads(batch):
  """{name: zero-argument compiled function}, traced under the current switch."""
  model = cnn.SmallCNN()
  variables = cnn.init(model, jax.random.PRNGKey(0))
  logits_fn = cnn.logits_fn(model, variables)
  x = jax.random.uniform(jax.random.PRNGKey(1), (batch, 32, 32, 3))
  y = jnp.argmax(logits_fn(x), -1)
  key = jax.random.PRNGKey(2)

  def pgd(unroll):
    return lambda: gradient.pgd(logits_fn, x, y, key=key, epsilon=8 / 255, step_size=2 / 255,
                                num_steps=10, early_stop=False, unroll=unroll).x_adv

  flow = iresnet.smoke()
  xf = x[: max(batch // 2, 1)]
  fvars = flow.init({"params": key, "logdet": key}, xf)
  params = fvars["params"]
  state = {k: v for k, v in fvars.items() if k != "params"}

  def nll(p, v):
    (z, log_det), _ = flow.apply({"params": p, **state}, v, rngs={"logdet": key},
                                 mutable=list(state))
    return jnp.mean(0.5 * jnp.sum(z ** 2, axis=(1, 2, 3)) - log_det)

  flow_step = compilation.jit(jax.value_and_grad(nll))
  return {
      "PGD-10, lax.while_loop": pgd(False),
      "PGD-10, unrolled (unroll=True)": pgd(True),
      "Carlini-Wagner L2, 2 x 10 steps": lambda: cw.carlini_wagner_l2(
          logits_fn, x, y, binary_search_steps=2, num_steps=10).x_adv,
      "local Lipschitz, 10 power iterations": lambda: lipschitz.local_lipschitz(
          logits_fn, x, key=key, num_iters=10),
      f"i-ResNet smoke train step (batch {xf.shape[0]})": lambda: flow_step(params, xf),
  }


def _build(switch, batch):
  previous = os.environ.get(conv.ENV_SWITCH)
  os.environ[conv.ENV_SWITCH] = switch
  try:
    fns = _workloads(batch)
    outs = {name: jax.block_until_ready(fn()) for name, fn in fns.items()}  # compile now
  finally:
    if previous is None:
      del os.environ[conv.ENV_SWITCH]
    else:
      os.environ[conv.ENV_SWITCH] = previous
  return fns, outs


def run(batch, repeats):
  ours, out_ours = _build("1", batch)
  peer, out_peer = _build("0", batch)
  for name in ours:
    for a, b in zip(jax.tree_util.tree_leaves(out_ours[name]),
                    jax.tree_util.tree_leaves(out_peer[name])):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4,
                                 err_msg=name)
  times = {name: ([], []) for name in ours}
  for _ in range(repeats):
    for name in ours:
      for fn, acc in ((ours[name], times[name][0]), (peer[name], times[name][1])):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        acc.append(time.perf_counter() - t0)
  lines = [f"Convolution gradients in loops, {jax.devices()[0].platform.upper()} "
           f"({os.cpu_count()} cores), SmallCNN batch {batch}, {repeats} interleaved rounds, "
           f"invjax compiler options {compilation.compiler_options() or 'none'}", "",
           "| workload | invjax.conv (ms) | lax.conv (ms) | speed-up |", "|---|---|---|---|"]
  for name, (t_ours, t_peer) in times.items():
    a, b = 1e3 * np.median(t_ours), 1e3 * np.median(t_peer)
    lines.append(f"| {name} | {a:.0f} | {b:.0f} | {b / a:.2f}x |")
  return "\n".join(lines)


def main(argv):
  del argv
  text = run(FLAGS.batch, FLAGS.repeats) + "\n"
  report.emit(text, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
