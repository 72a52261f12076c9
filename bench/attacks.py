r"""Attack benchmark (CPU by default), in one run:

(a) PGD-20 L_inf throughput (images/s) of invjax vs Foolbox 3 (PyTorch) on the same
    CIFAR CNN (`invjax.nets.cnn.SmallCNN`, weights copied into an equivalent torch
    module; the two forwards are checked to agree), and torchattacks when it is
    importable (not installed by default: `pip install --no-deps torchattacks`, since its
    dependencies would replace the CPU torch build), and a hand-written PyTorch PGD loop (no
    library, frozen weights: the equal-work floor of the PyTorch side). invjax runs twice:
    with the batch split over one JAX CPU device per core (`--cpu_devices=-1`, the default,
    as `launch/attack.py` does; `invjax.parallel.call_sharded`) and on one device. Same
    batch, epsilon 8/255, step 2/255, random start, all 20 steps for every image (no early
    stop). Target: invjax >= 1.5x Foolbox. The
    reference Foolbox row runs the torch model with frozen weights (`requires_grad_(False)`):
    Foolbox's `loss.backward()` otherwise also computes every weight gradient, work invjax
    does not do; that default-usage row is reported too.
(b) Latent inversion vs PGD-50 (L_inf, 8/255) on the same invertible classifier (the
    smoke Glow classifier of `launch/configs/attack.py:smoke`, trained if missing):
    success rate, median L2 / L_inf distance of the successes and time per example.
    Target: the same success at a tenth of PGD's time or less.

  python bench/attacks.py --out=/tmp/bench_attacks.md

Timings exclude compilation (one warm-up call each; PyTorch runs eagerly). In (a) the
implementations run in turn, `--repeats` rounds, so that a slow spell of the shared
machine hits all of them: the table gives each one's median images/s and the median
(min-max) of the per-round speed-ups. (b) reports the best of `--repeats` runs.
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
from invjax._src import compilation
from invjax import data as data_lib
from invjax import parallel
from invjax.attacks import gradient
from invjax.attacks import latent
from invjax.nets import cnn

flags.DEFINE_integer("batch", 128, "Images per attack call.")
flags.DEFINE_integer("repeats", 3, "Timed rounds: (a) interleaved, medians reported; (b) the "
                     "best of them.")
flags.DEFINE_integer("cnn_steps", 300, "Training steps of the CNN (part a).")
flags.DEFINE_string("clf_dir", "/tmp/invjax_bench_classifier",
                    "Workdir of the invertible classifier (trained there if missing).")
flags.DEFINE_string("out", None, "Also write the markdown tables to this file.")
flags.DEFINE_enum("part", "all", ["all", "a", "b"], "Run both parts, or only (a) or (b).")
flags.DEFINE_integer("cpu_devices", -1, "JAX CPU devices (set before JAX starts): -1 one per "
                     "core, 0 JAX's default (one). invjax rows split their batch over them.")
FLAGS = flags.FLAGS

EPS = 8 / 255
STEP = 2 / 255
FOOLBOX = "Foolbox 3.3 (PyTorch), frozen weights"


def _interleaved_times(fns, repeats):
  """{name: [seconds per round]}: one warm-up call each, then `repeats` rounds in turn."""
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  outs = {}
  for _ in range(repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      outs[name] = fn()
      times[name].append(time.perf_counter() - t0)
  return times, outs


def _best_time(fn, repeats):
  fn()  # warm-up / compile
  best = float("inf")
  out = None
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    best = min(best, time.perf_counter() - t0)
  return best, out


# ----------------------------------------------------------------------------- (a)


def bench_throughput(batch, repeats, cnn_steps):
  import torch  # pylint: disable=g-import-not-at-top
  import foolbox as fb  # pylint: disable=g-import-not-at-top

  model, variables = torch_cnn.train_small_cnn(cnn_steps)
  test = data_lib.load("cifar10_mini", "test")
  x = data_lib.to_float(test.x[:batch])
  y = jnp.asarray(test.y[:batch])
  logits_fn = jax.jit(cnn.logits_fn(model, variables))
  tmodel = torch_cnn.small_cnn(variables)
  xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
  yt = torch.from_numpy(np.asarray(y).astype(np.int64))
  with torch.no_grad():
    diff = float(np.abs(tmodel(xt).numpy() - np.asarray(logits_fn(x))).max())
  clean_acc = float(np.mean(np.argmax(np.asarray(logits_fn(x)), 1) == np.asarray(y)))

  def invjax_pgd(xb, yb):
    return gradient.pgd(logits_fn, xb, yb, key=jax.random.PRNGKey(0), epsilon=EPS, step_size=STEP,
                        num_steps=20, norm="linf", random_start=True, early_stop=False)

  def invjax_runner(split):
    def run():
      res = parallel.call_sharded(invjax_pgd, x, y) if split else invjax_pgd(x, y)
      jax.block_until_ready(res.x_adv)
      return float(np.mean(np.asarray(res.success)))
    return run

  def run_torch_loop():
    """PGD-20 as a plain PyTorch loop: the same steps, no library around them."""
    xa = torch_cnn.pgd_linf(frozen, xt, yt, epsilon=EPS, step_size=STEP, num_steps=20)
    with torch.no_grad():
      return float((frozen(xa).argmax(1) != yt).float().mean())

  fb_attack = fb.attacks.LinfPGD(steps=20, abs_stepsize=STEP, random_start=True)

  def foolbox_runner(module):
    fmodel = fb.PyTorchModel(module, bounds=(0, 1))

    def run():
      _, _, success = fb_attack(fmodel, xt, yt, epsilons=EPS)
      return float(success.float().mean())
    return run

  # Foolbox differentiates with `loss.backward()`, which also computes the gradient of
  # every weight that requires one (nn.Module's default, and Foolbox's documented usage).
  # The reference row freezes the weights: the same work as invjax's input gradient.
  frozen = torch_cnn.small_cnn(variables).requires_grad_(False)
  devices = jax.local_device_count()
  fns = {FOOLBOX: foolbox_runner(frozen)}
  if devices > 1:
    fns[f"invjax, batch split over {devices} CPU devices"] = invjax_runner(True)
  fns["invjax, one device"] = invjax_runner(False)
  fns["Foolbox 3.3, weights requiring grad"] = foolbox_runner(tmodel)
  fns["PyTorch hand-written loop, frozen weights"] = run_torch_loop
  try:
    import torchattacks  # pylint: disable=g-import-not-at-top
    ta = torchattacks.PGD(tmodel, eps=EPS, alpha=STEP, steps=20, random_start=True)

    def run_ta():
      adv = ta(xt, yt)
      with torch.no_grad():
        return float((tmodel(adv).argmax(1) != yt).float().mean())

    # as documented: weights that require grad; its `torch.autograd.grad(cost, adv_images)`
    # computes only the input gradient, the same work as invjax
    fns[f"torchattacks {torchattacks.__version__} (PyTorch), as documented"] = run_ta
    ta_note = ""
  except ImportError:
    ta_note = ("torchattacks: skipped (not installed; `pip install --no-deps torchattacks` adds "
               "it without replacing the CPU torch build, which its dependencies would).")
  times, success = _interleaved_times(fns, repeats)
  t_fb = np.asarray(times[FOOLBOX])
  lines = [f"(a) PGD-20 L_inf, eps 8/255, step 2/255, batch {batch}, "
           f"{jax.devices()[0].platform.upper()} ({os.cpu_count()} cores); SmallCNN trained "
           f"{cnn_steps} steps, clean accuracy {clean_acc:.2f}; max |logit diff| JAX vs torch "
           f"{diff:.1e}; invjax compiler options: one device "
           f"{compilation.compiler_options(1) or 'none'}, {devices} devices "
           f"{compilation.compiler_options(devices) or 'none'}; torch threads "
           f"{torch.get_num_threads()}; {repeats} interleaved rounds", "",
           "| implementation | images/s (median) | speed-up vs Foolbox, median (min-max) "
           "| success rate |",
           "|---|---|---|---|"]
  for name, t in times.items():
    t = np.asarray(t)
    ratio = t_fb / t
    lines.append(f"| {name} | {batch / np.median(t):.1f} | {np.median(ratio):.2f}x "
                 f"({ratio.min():.2f}-{ratio.max():.2f}) | {success[name]:.2f} |")
  if ta_note:
    lines += ["", ta_note]
  return "\n".join(lines)


# ----------------------------------------------------------------------------- (b)


def bench_latent(batch, repeats, clf_dir):
  from launch import attack as attack_launch  # pylint: disable=g-import-not-at-top
  from launch.configs import attack as attack_configs  # pylint: disable=g-import-not-at-top

  config = attack_configs.get_config("smoke")
  train_ds = data_lib.load("cifar10_mini", "train")
  test = data_lib.load("cifar10_mini", "test")
  model, variables, _, step = attack_launch.load_or_train(config, clf_dir, train_ds, test)
  if jax.local_device_count() > 1:  # on every device, next to the split batch
    variables = parallel.replicate(variables, parallel.local_data_mesh())
  logits_fn = jax.jit(lambda v: model.apply(
      variables, model.apply(variables, v, method="encode"), method="logits"))
  x_all = data_lib.to_float(test.x)
  pred = np.asarray(jnp.argmax(logits_fn(x_all), -1))
  correct = np.where(pred == test.y)[0][:batch]
  x, y = x_all[correct], jnp.asarray(test.y[correct])
  n = len(correct)

  runs = {
      "PGD-50 (pixels)": lambda xb, yb: gradient.pgd(
          logits_fn, xb, yb, key=jax.random.PRNGKey(0), epsilon=EPS, step_size=2.5 * EPS / 50,
          num_steps=50, norm="linf", early_stop=False),
      "PGD-50, early stop": lambda xb, yb: gradient.pgd(
          logits_fn, xb, yb, key=jax.random.PRNGKey(0), epsilon=EPS, step_size=2.5 * EPS / 50,
          num_steps=50, norm="linf", early_stop=True),
      "latent closed form": lambda xb, yb: latent.latent_attack_from_model(
          model, variables, xb, yb, method="closed_form", norm="linf", epsilon=EPS),
      "latent closed form, no line search": lambda xb, yb: latent.latent_attack_from_model(
          model, variables, xb, yb, method="closed_form", norm="linf", epsilon=EPS,
          step_scales=()),
      "latent Jacobian, 1 iter, top-3": lambda xb, yb: latent.latent_attack_from_model(
          model, variables, xb, yb, method="jacobian", norm="linf", epsilon=EPS, num_iters=1,
          num_candidates=3),
      "latent Jacobian, 1 iter, top-3, no line search": lambda xb, yb: latent.latent_attack_from_model(
          model, variables, xb, yb, method="jacobian", norm="linf", epsilon=EPS, num_iters=1,
          num_candidates=3, step_scales=()),
      "latent Jacobian, 3 iters": lambda xb, yb: latent.latent_attack_from_model(
          model, variables, xb, yb, method="jacobian", norm="linf", epsilon=EPS, num_iters=3),
      # The latent target decoded to first order (x + dx): no decoder pass.
      "latent Jacobian, 1 iter, top-3, linear decode, no line search": lambda xb, yb: (
          latent.latent_attack_from_model(
              model, variables, xb, yb, method="jacobian", norm="linf", epsilon=EPS,
              num_iters=1, num_candidates=3, decode_step="linear", step_scales=())),
      "latent Jacobian, 3 iters, linear decode": lambda xb, yb: latent.latent_attack_from_model(
          model, variables, xb, yb, method="jacobian", norm="linf", epsilon=EPS, num_iters=3,
          decode_step="linear"),
  }
  lines = [f"(b) L_inf eps 8/255 on the smoke Glow classifier (step {step}, "
           f"{n} correctly classified test images, split over {jax.local_device_count()} "
           "device(s))", "",
           "| attack | success | median L2 | median L_inf | ms / example | time vs PGD-50 |",
           "|---|---|---|---|---|---|"]
  t_pgd = None
  for name, fn in runs.items():
    def timed(fn=fn):
      res = parallel.call_sharded(fn, x, y)
      jax.block_until_ready(res.x_adv)
      return res
    t, res = _best_time(timed, repeats)
    if t_pgd is None:
      t_pgd = t
    ok = np.asarray(res.success)
    med = lambda d: float(np.median(np.asarray(d)[ok])) if ok.any() else float("nan")
    # Success re-checked independently of the attack's own bookkeeping.
    recheck = np.argmax(np.asarray(logits_fn(res.x_adv)), 1) != np.asarray(y)
    assert np.array_equal(recheck, ok), name
    lines.append(f"| {name} | {ok.mean():.2f} | {med(res.l2):.4f} | {med(res.linf):.4f} | "
                 f"{1e3 * t / n:.2f} | {t / t_pgd:.3f} |")
  return "\n".join(lines)


def main(argv):
  del argv
  if FLAGS.cpu_devices:
    parallel.cpu_cores_as_devices(None if FLAGS.cpu_devices < 0 else FLAGS.cpu_devices)
  out = []
  if FLAGS.part in ("all", "a"):
    out.append(bench_throughput(FLAGS.batch, FLAGS.repeats, FLAGS.cnn_steps))
  if FLAGS.part in ("all", "b"):
    out.append(bench_latent(FLAGS.batch, FLAGS.repeats, FLAGS.clf_dir))
  text = "\n\n".join(out) + "\n"
  report.emit(text, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
