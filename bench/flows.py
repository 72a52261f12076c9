r"""Benchmark: i-ResNet fixed-point inverses, measured Lipschitz constants, flow training throughput.

(a) For each spectral-norm coefficient c in `--coeffs`, a random i-ResNet
    (`--stages`, `--hidden`, ELU, 3-1-3 convs, kernels blown up so every spectral normalisation
    binds, power iterations converged) on real embedded CIFAR-10 images (32x32x3, in [0, 1]):
    `max |inverse(forward(x)) - x|` after 1, 2, 5, 10, 20, 50, 100 fixed-point iterations per
    block (tolerance 0, so exactly that many), and next to c the measured Lipschitz constant of
    the first block's residual branch g: the largest singular value of its dense 3072x3072
    Jacobian (`jax.jacfwd` + SVD) at the first image, the largest over the images used for the
    Jacobian (`--lip_images`), and the nominal bound `c ** n_layers`.
(b) Training-step throughput (images/s, compiled step, after warm-up) with a plain optax Adam
    step on the NLL (dequantised pixels, standard-normal prior) of the smoke Glow
    (`invjax.flows.glow.Glow((32, 32, 3), num_levels=2, num_steps=4, hidden=32)`) and the smoke
    i-ResNet (`invjax.flows.iresnet.smoke()`: 2x2 blocks, hidden 32, power-series log-det with 5
    terms, Neumann gradient) plus the same i-ResNet with the Russian-roulette estimator.
    Peer columns (`--peer=normflows`, the default): the same three models in normflows
    (PyTorch, `bench/flows_peer.py`), eager Adam steps on the same loss and batches, in the
    same run, and the ratio invjax / normflows of images/s. `--models` picks the rows (glow,
    iresnet, iresnet_rr).

  .venv/bin/python -m bench.flows --out /tmp/flows_bench.md
  .venv/bin/python -m bench.flows --coeffs 0.9 --skip_throughput        # quick
  python -m bench.flows --peer_device=cuda      # a GPU: the peer on CUDA too

normflows is no dependency of invjax: `pip install --no-deps normflows` (torch is in the test
extra); without it the peer columns say so.
"""
from __future__ import annotations

import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench import flows_peer
from bench import report
from invjax import data
from invjax.flows import iresnet
from invjax.flows.glow import Glow
from invjax.flows.spectral_norm import converge_spectral_norms

flags.DEFINE_list("coeffs", ["0.5", "0.7", "0.9", "0.97"], "Spectral-norm coefficients.")
flags.DEFINE_list("iterations", ["1", "2", "5", "10", "20", "50", "100"], "Fixed-point iterations.")
flags.DEFINE_list("stages", ["2"], "Blocks per stage of the random i-ResNet in (a).")
flags.DEFINE_integer("hidden", 32, "Width of g in (a).")
flags.DEFINE_float("kernel_scale", 5.0, "Factor on the initial kernels in (a) (> 1: norms bind).")
flags.DEFINE_integer("num_images", 16, "Real CIFAR-10 test images for (a).")
flags.DEFINE_integer("lip_images", 1, "Images at which the dense Jacobian of g is measured.")
flags.DEFINE_bool("skip_throughput", False, "Skip (b).")
flags.DEFINE_integer("batch_size", 32, "Training batch size for (b).")
flags.DEFINE_integer("steps", 10, "Timed training steps for (b) (after 2 warm-up steps).")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_list("models", ["glow", "iresnet", "iresnet_rr"], "Rows of (b).")
flags.DEFINE_enum("peer", "normflows", ["normflows", "none"], "Peer implementation of (b).")
flags.DEFINE_enum("peer_device", "auto", ["auto", "cpu", "cuda"], "Device of the peer; auto: "
                  "cuda when JAX runs on a GPU and torch sees one.")
flags.DEFINE_integer("peer_threads", 0, "torch intra-op threads of the peer (0: default).")
flags.DEFINE_string("out", None, "Write the markdown tables to this file.")
FLAGS = flags.FLAGS


def _scale_kernels(variables, factor):
  def f(path, leaf):
    return leaf * factor if "kernel" in jax.tree_util.keystr(path) else leaf
  return {**variables, "params": jax.tree_util.tree_map_with_path(f, variables["params"])}


def _g_spectral_norm(model, variables, x1):
  """Largest singular value of the dense Jacobian of the first block's g at `x1` [H, W, C]."""
  block = "stage0_block0"
  sub = {k: v[block] for k, v in variables.items()}
  blk = iresnet.IResNetBlock(**model.block_kwargs())
  g = lambda z: (blk.apply(sub, z.reshape((1,) + x1.shape), method="transform")
                 - z.reshape((1,) + x1.shape)).reshape(-1)
  jac = jax.jit(jax.jacfwd(g))(x1.reshape(-1))
  return float(np.linalg.svd(np.asarray(jac, np.float64), compute_uv=False)[0])


def inverse_table(x):
  iters = [int(i) for i in FLAGS.iterations]
  stages = tuple(int(s) for s in FLAGS.stages)
  rows = []
  for c in [float(c) for c in FLAGS.coeffs]:
    model = iresnet.IResNet(stages=stages, hidden=FLAGS.hidden, coeff=c, activation="elu",
                            logdet="none")
    key = jax.random.key(FLAGS.seed)
    variables = jax.jit(lambda k, v: model.init(k, v, method="transform"))(key, x)
    variables = _scale_kernels(variables, FLAGS.kernel_scale)
    variables = converge_spectral_norms(model, variables, x, n_rounds=60, method="transform")
    fwd = jax.jit(lambda vs, v: model.apply(vs, v, method="transform"))
    # tol 0 runs exactly n iterations on purpose: no ConvergenceWarning (warn=False).
    inv = jax.jit(lambda vs, z, n: model.apply(vs, z, method="inverse_transform", tol=0.0,
                                               max_iter=n, warn=False))
    z = fwd(variables, x)
    errs, res = [], []
    for n in iters:
      x_rec, infos = inv(variables, z, jnp.int32(n))
      errs.append(float(jnp.max(jnp.abs(x_rec - x))))
      res.append(max(float(jnp.max(i.residual)) for i in infos))
    lips = [_g_spectral_norm(model, variables, x[i]) for i in range(FLAGS.lip_images)]
    rows.append((c, max(lips), c ** len(model.kernel_sizes), errs, res))
    print(f"c={c}: Lip(g) measured {max(lips):.4f}; errors {['%.1e' % e for e in errs]}", flush=True)
  head = ("| c | nominal Lip(g) = c^3 | measured Lip(g) | "
          + " | ".join(f"err@{n}" for n in iters) + " | residual@max |")
  lines = [head, "|" + "---|" * (4 + len(iters))]
  for c, lip, nominal, errs, res in rows:
    lines.append(f"| {c} | {nominal:.3f} | {lip:.3f} | " + " | ".join(f"{e:.1e}" for e in errs)
                 + f" | {res[-1]:.1e} |")
  return "\n".join(lines)


def _nll_bits(log_px, dims):
  return -(log_px - dims * np.log(256.0)) / (dims * np.log(2.0))


def _timed_train(name, init_fn, loss_fn, x_uint8, batch_size, steps):
  """Times a jitted Adam step of `loss_fn(params, state, key, x) -> (loss, new_state)`."""
  key = jax.random.key(FLAGS.seed)
  n = x_uint8.shape[0]
  params, state = init_fn(key, data.to_float(x_uint8[:batch_size]))
  opt = optax.adam(1e-3)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, state, opt_state, key, xb):
    k_deq, k_loss = jax.random.split(key)
    x = (xb.astype(jnp.float32) + jax.random.uniform(k_deq, xb.shape)) / 256.0
    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, k_loss, x)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), state, opt_state, loss

  losses = []
  t_compile = time.perf_counter()
  for i in range(steps + 2):
    if i == 2:
      jax.block_until_ready(params)
      t0 = time.perf_counter()
    key, k = jax.random.split(key)
    lo = (i * batch_size) % (n - batch_size + 1)
    params, state, opt_state, loss = step(params, state, opt_state, k,
                                          jnp.asarray(x_uint8[lo:lo + batch_size]))
    losses.append(float(loss))
    if i == 0:
      t_compile = time.perf_counter() - t_compile
  dt = time.perf_counter() - t0
  n_params = sum(int(np.size(p)) for p in jax.tree.leaves(params))
  ips = steps * batch_size / dt
  print(f"{name}: {ips:.1f} images/s, compile+first step {t_compile:.1f}s, "
        f"bits/dim {losses[0]:.2f} -> {losses[-1]:.2f}", flush=True)
  return (name, n_params, ips, 1000 * dt / steps, t_compile, losses[0], losses[-1])


def _peer_device():
  import torch  # pylint: disable=g-import-not-at-top
  if FLAGS.peer_device == "auto":
    return "cuda" if jax.devices()[0].platform == "gpu" and torch.cuda.is_available() else "cpu"
  return FLAGS.peer_device


def peer_rows(x_uint8, models):
  """{model: row of `flows_peer.timed_train`}, or {model: why there is none}."""
  if FLAGS.peer == "none":
    return {m: "-" for m in models}
  reason = flows_peer.unavailable()
  device = "cpu" if reason else _peer_device()
  reason = reason or flows_peer.unavailable(device)
  if reason:
    return {m: f"normflows {reason}" for m in models}
  import torch  # pylint: disable=g-import-not-at-top
  if FLAGS.peer_threads:
    torch.set_num_threads(FLAGS.peer_threads)
  builders = {"glow": flows_peer.glow, "iresnet": flows_peer.iresnet,
              "iresnet_rr": lambda: flows_peer.iresnet(logdet="russian_roulette")}
  out = {}
  for m in models:
    out[m] = flows_peer.timed_train(f"normflows {m} ({device})", builders[m](), x_uint8,
                                    FLAGS.batch_size, FLAGS.steps, device, FLAGS.seed)
    print(f"{out[m][0]}: {out[m][2]:.1f} images/s, first step {out[m][4]:.1f}s, "
          f"bits/dim {out[m][5]:.2f} -> {out[m][6]:.2f}", flush=True)
  return out


def throughput_table(x_uint8):
  bs, steps, dims = FLAGS.batch_size, FLAGS.steps, 32 * 32 * 3
  models = list(FLAGS.models)
  unknown = sorted(set(models) - {"glow", "iresnet", "iresnet_rr"})
  if unknown:
    raise app.UsageError(f"--models: unknown {unknown} (glow, iresnet, iresnet_rr)")
  rows = {}
  glow = Glow((32, 32, 3), num_levels=2, num_steps=4, hidden=32)

  def glow_init(key, x):
    return glow.init(key, x - 0.5)["params"], None

  def glow_loss(params, state, key, x):
    return jnp.mean(_nll_bits(glow.apply({"params": params}, x - 0.5, method="log_prob"),
                              dims)), state
  if "glow" in models:
    rows["glow"] = _timed_train("Glow smoke (2 levels x 4 steps, hidden 32)", glow_init,
                                glow_loss, x_uint8, bs, steps)

  for key, label, overrides in [("iresnet", "power series, 5 terms", {}),
                                ("iresnet_rr", "Russian roulette",
                                 dict(logdet="russian_roulette"))]:
    if key not in models:
      continue
    model = iresnet.smoke(**overrides)

    def init(key, x, model=model):
      vs = jax.jit(model.init)(key, x - 0.5)
      return vs["params"], vs["spectral"]

    def loss(params, spectral, key, x, model=model):
      (z, ld), upd = model.apply({"params": params, "spectral": spectral}, x - 0.5,
                                 rngs={"logdet": key}, mutable=["spectral"])
      z = z.reshape(z.shape[0], -1)
      log_pz = -0.5 * jnp.sum(z * z, 1) - 0.5 * dims * np.log(2 * np.pi)
      return jnp.mean(_nll_bits(log_pz + ld, dims)), upd["spectral"]
    rows[key] = _timed_train(f"i-ResNet smoke (2x2 blocks, hidden 32, {label})", init, loss,
                             x_uint8, bs, steps)
  peers = peer_rows(x_uint8, list(rows))
  lines = ["| model | params | images/s | ms/step | compile + 1st step (s) | bits/dim first -> "
           "last | peer | peer params | peer images/s | peer 1st step (s) | peer bits/dim "
           "first -> last | invjax / peer |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for key, (name, n_params, ips, ms, tc, l0, l1) in rows.items():
    peer = peers[key]
    if isinstance(peer, str):
      tail = f"{peer} | - | - | - | - | - |"
    else:
      _, pn, pips, _, pt, p0, p1 = peer
      tail = (f"normflows | {pn:,} | {pips:.1f} | {pt:.1f} | {p0:.2f} -> {p1:.2f} | "
              f"{ips / pips:.2f}x |")
    lines.append(f"| {name} | {n_params:,} | {ips:.1f} | {ms:.0f} | {tc:.1f} | {l0:.2f} -> "
                 f"{l1:.2f} | {tail}")
  return "\n".join(lines)


def main(argv):
  del argv
  test = data.load("cifar10_mini", "test")
  x = data.to_float(test.x[:FLAGS.num_images])
  device = jax.devices()[0]
  header = (f"# invjax flows benchmark\n\nDevice: {device.platform} ({device.device_kind}), "
            f"jax {jax.__version__}\n")
  parts = [header, "## (a) i-ResNet inverse error vs fixed-point iterations\n", inverse_table(x)]
  if not FLAGS.skip_throughput:
    parts += ["\n## (b) training-step throughput (Adam on the NLL, batch "
              f"{FLAGS.batch_size})\n", throughput_table(np.asarray(data.load("cifar10_mini",
                                                                              "train").x))]
  text = "\n".join(parts) + "\n"
  report.emit(text, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
