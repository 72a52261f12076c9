r"""Attacks an invertible classifier: pixel-space (FGSM, PGD, CW) and latent-space attacks.

Runs every attack named in `config.attacks` (registry `ATTACKS`) on the first
`config.num_examples` test images and writes to `--workdir`:

  results.md / results.json   success rate vs epsilon, median distances, cost, time
  success_vs_epsilon.png      the curves
  grid_<attack>.png           clean / adversarial / amplified difference images
  metamers.png                invariance attack: x1, x2 and the metamer (if requested)

The classifier comes from `config.checkpoint_dir` (a workdir of
`launch/train_classifier.py`, or any directory whose `checkpoints/` hold an
`invjax.train.TrainState` of the model described by `config.model` / `config.head`;
the model sees `x + config.input_offset`, -0.5 as in `launch/train_classifier.py`);
when `config.train_steps > 0` and no checkpoint exists there, a classifier is first
trained in `<workdir>/classifier` (the smoke config does this in about a minute).

Budgeted attacks (fgsm, pgd) run once per epsilon; minimal-distance attacks (cw and
the latent attacks) run once, and their success at epsilon is `success and
distance <= epsilon` (the usual robustness curve).

On a CPU the attacked batch is split over one JAX device per core (`--cpu_devices=-1`, the
default; `invjax.parallel.call_sharded`): every attack of the smoke config ran faster so on
2 cores; `--cpu_devices=0` keeps JAX's single device. Results are the same up to float
rounding.

  python -m launch.attack --config=launch/configs/attack_smoke.py --workdir=/tmp/attack_smoke
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Dict, NamedTuple, Tuple

if __package__ in (None, ""):  # `python launch/attack.py`: make `launch` importable
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
from invjax.attacks import gradient
from invjax.attacks import invariance
from invjax.attacks import latent
from invjax._src.checks import InvjaxError
from invjax.flows import classifier as classifier_lib
from launch import runtime

# ----------------------------------------------------------------------------- model


def _flow_kwargs(model_config) -> Dict[str, Any]:
  kw = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
  kw.pop("name", None)
  return {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}


def _glow(mc, shape):
  from invjax.flows.glow import Glow  # pylint: disable=g-import-not-at-top
  return Glow(image_shape=tuple(shape), **_flow_kwargs(mc))


def _realnvp(mc, shape):
  from invjax.flows.glow import RealNVP  # pylint: disable=g-import-not-at-top
  return RealNVP(image_shape=tuple(shape), **_flow_kwargs(mc))


def _iresnet(mc, shape):
  del shape
  from invjax.flows import iresnet  # pylint: disable=g-import-not-at-top
  return iresnet.from_config(_flow_kwargs(mc))


def _irevnet(mc, shape):
  del shape
  from invjax.flows.irevnet import IRevNet  # pylint: disable=g-import-not-at-top
  return IRevNet(**_flow_kwargs(mc))


FLOWS: Dict[str, Callable] = {"glow": _glow, "realnvp": _realnvp, "iresnet": _iresnet,
                              "irevnet": _irevnet}


def build_classifier(config, image_shape) -> classifier_lib.InvertibleClassifier:
  """The `InvertibleClassifier` of `config.model` (flow name + kwargs), `config.head`."""
  name = config.model.name
  if name not in FLOWS:
    raise InvjaxError(f"unknown flow '{name}', expected one of {sorted(FLOWS)}")
  flow = FLOWS[name](config.model, image_shape)
  return classifier_lib.make_classifier(flow, config.num_classes, tuple(image_shape),
                                        head=config.head,
                                        slice_dims=config.get("slice_dims", None))


def _train_smoke(config, model, train_ds, workdir) -> None:
  """Trains `model` with cross-entropy (+ optional bits/dim) into `workdir/checkpoints`."""
  key = jax.random.PRNGKey(config.seed)
  init_key, state_key = jax.random.split(key)
  x_init = data_lib.to_float(train_ds.x[:config.batch_size]) + config.input_offset
  variables = jax.jit(model.init)({"params": init_key, "logdet": init_key}, x_init)
  params, model_state = train.split_variables(variables)
  optimizer = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(config.learning_rate))
  state = train.TrainState.create(params, optimizer, state_key, model_state)

  def loss_fn(params, model_state, batch, rng):
    x = data_lib.to_float(batch["x"]) + config.input_offset
    (logits, z, log_det), new_state = model.apply(
        {"params": params, **model_state}, x, rngs={"logdet": rng},
        mutable=list(model_state))
    loss, metrics = classifier_lib.hybrid_loss(logits, batch["y"], z, log_det,
                                               nll_weight=config.nll_weight)
    return loss, (new_state, metrics)

  step = train.make_train_step(loss_fn, optimizer)
  train_config = dict(num_steps=config.train_steps, batch_size=config.batch_size,
                      log_every=max(1, config.train_steps // 5),
                      checkpoint_every=config.train_steps, seed=config.seed,
                      async_checkpoints=False)
  train.train_loop(train_config, state, step, train_ds, workdir, progress=False)


def load_classifier(config, model, checkpoint_dir: str):
  """(variables, step) of the latest checkpoint in `checkpoint_dir[/checkpoints]`.

  Restores the saved `TrainState` without a template (any optimizer) and keeps its
  `params` and `model_state`.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  del config, model
  path = os.path.abspath(checkpoint_dir)
  if os.path.isdir(os.path.join(path, train.CHECKPOINT_DIR)):
    path = os.path.join(path, train.CHECKPOINT_DIR)
  if not os.path.isdir(path):
    raise InvjaxError(f"no checkpoint directory at {path}")
  with ocp.CheckpointManager(path) as manager:
    step = manager.latest_step()
    if step is None:
      raise InvjaxError(f"no finished checkpoint in {path}")
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  state = out["state"]
  variables = {"params": state["params"], **dict(state.get("model_state") or {})}
  return jax.tree.map(jnp.asarray, variables), int(step)


# ----------------------------------------------------------------------------- attacks


class Context(NamedTuple):
  """What an attack runner needs, as functions of images in [0, 1] (built once, so every
  jitted attack compiles once): the model sees `x + config.input_offset`."""
  encode: Callable  # x [B, H, W, C] in [0, 1] -> z [B, D]
  decode: Callable  # z -> x in image coordinates
  head: Tuple[Any, Any]  # (A [D, K], b [K]) with logits = z @ A + b
  logits_fn: Callable  # x -> logits
  config: Any


def make_context(config, model, variables) -> Context:
  offset = float(config.input_offset)
  encode = lambda v: model.apply(variables, v + offset, method="encode")
  decode = lambda z: model.apply(variables, z, method="decode") - offset
  a, b = model.apply(variables, method="linear_head")
  logits_fn = jax.jit(lambda v: encode(v) @ a + b)
  return Context(encode, decode, (a, b), logits_fn, config)


def _fgsm(ctx, x, y, eps, key):
  return gradient.fgsm(ctx.logits_fn, x, y, key=key, epsilon=eps, norm=ctx.config.norm)


def _pgd(ctx, x, y, eps, key):
  return gradient.pgd(ctx.logits_fn, x, y, key=key, epsilon=eps, norm=ctx.config.norm,
                      num_steps=ctx.config.pgd_steps)


def _cw(ctx, x, y, eps, key):
  del eps
  return gradient.carlini_wagner_l2(ctx.logits_fn, x, y, key=key, num_steps=ctx.config.cw_steps,
                                    binary_search_steps=ctx.config.cw_search_steps)


def _latent(method, decode_step="exact"):
  def run(ctx, x, y, eps, key):
    del eps, key
    return latent.latent_attack(ctx.encode, ctx.decode, ctx.head, x, y, method=method,
                                norm=ctx.config.norm, num_iters=ctx.config.latent_iters,
                                num_steps=ctx.config.latent_opt_steps,
                                num_candidates=ctx.config.latent_candidates or None,
                                decode_step=decode_step)
  return run


# name -> (runner(ctx, x, y, epsilon or None, key) -> AttackResult, needs_epsilon)
ATTACKS: Dict[str, Tuple[Callable, bool]] = {
    "fgsm": (_fgsm, True),
    "pgd": (_pgd, True),
    "cw": (_cw, False),
    "latent_closed_form": (_latent("closed_form"), False),
    "latent_jacobian": (_latent("jacobian"), False),
    # the latent target decoded to first order (x + dx; no decoder pass)
    "latent_jacobian_linear": (_latent("jacobian", "linear"), False),
    "latent_optimize": (_latent("optimize"), False),
}
EXTRA = ("invariance",)


def _dist(result, norm):
  return np.asarray(result.linf if norm == "linf" else result.l2)


def _timed(fn):
  t0 = time.perf_counter()
  out = fn()
  jax.block_until_ready(out.x_adv)
  return out, time.perf_counter() - t0


def run_attack(name: str, ctx: Context, x, y, epsilons, key) -> Tuple[Dict[str, Any], Any]:
  """Success rate per epsilon and summary numbers of one attack; returns (row, a result)."""
  attack, budgeted = ATTACKS[name]
  norm = ctx.config.norm

  def runner(ctx, x, y, eps, key):  # the batch split over the local devices (if several)
    return parallel.call_sharded(lambda xb, yb: attack(ctx, xb, yb, eps, key), x, y)

  row: Dict[str, Any] = {"attack": name, "success": {}}
  if budgeted:
    total, last = 0.0, None
    for eps in epsilons:
      runner(ctx, x, y, float(eps), key)  # compile outside the timing (same shapes)
      res, secs = _timed(lambda e=eps: runner(ctx, x, y, float(e), key))
      total += secs
      row["success"][str(eps)] = float(np.mean(np.asarray(res.success)))
      last = res
    result, row["seconds_per_example"] = last, total / (len(epsilons) * len(x))
    row["note"] = f"run at each epsilon; distances at eps={epsilons[-1]}"
  else:
    runner(ctx, x, y, None, key)
    result, secs = _timed(lambda: runner(ctx, x, y, None, key))
    ok, dist = np.asarray(result.success), _dist(result, norm)
    for eps in epsilons:
      row["success"][str(eps)] = float(np.mean(ok & (dist <= eps + 1e-7)))
    row["seconds_per_example"] = secs / len(x)
    row["note"] = "minimal-distance attack, thresholded"
  ok = np.asarray(result.success)
  row["success_unbounded"] = float(ok.mean())
  for n in ("l2", "linf"):
    d = np.asarray(getattr(result, n))
    row[f"median_{n}"] = float(np.median(d[ok])) if ok.any() else float("nan")
  for n in ("num_grad_evals", "num_forward_evals", "num_inverse_evals"):
    row[n] = float(np.mean(np.asarray(getattr(result, n))))
  return row, result


def _markdown(rows, epsilons, norm) -> str:
  head = ["attack"] + [f"eps={e:g}" for e in epsilons] + [
      "unbounded", "median L2", "median Linf", "ms/example"]
  lines = [f"Success rate vs {norm} epsilon", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [r["attack"]] + [f"{r['success'][str(e)]:.2f}" for e in epsilons] + [
        f"{r['success_unbounded']:.2f}", f"{r['median_l2']:.4f}", f"{r['median_linf']:.4f}",
        f"{1e3 * r['seconds_per_example']:.2f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _plot_curves(rows, epsilons, norm, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for r in rows:
    ax.plot(epsilons, [r["success"][str(e)] for e in epsilons], marker="o", label=r["attack"])
  ax.set_xlabel(f"epsilon ({norm})")
  ax.set_ylabel("attack success rate")
  ax.set_ylim(-0.02, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  io.save_figure(fig, path, dpi=100)


def _plot_grid(rows_of_images, titles, path, num=8):
  """One row per entry of `rows_of_images` (each [N, H, W, C]), `num` columns."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  num = min(num, len(rows_of_images[0]))
  fig, axes = plt.subplots(len(rows_of_images), num, figsize=(1.2 * num, 1.3 * len(titles)),
                           squeeze=False)
  for r, (imgs, title) in enumerate(zip(rows_of_images, titles)):
    for c in range(num):
      ax = axes[r][c]
      ax.imshow(np.clip(np.asarray(imgs[c]), 0, 1))
      ax.set_xticks([])
      ax.set_yticks([])
      if c == 0:
        ax.set_ylabel(title, fontsize=7)
  fig.tight_layout()
  io.save_figure(fig, path, dpi=80)


def _diff_image(x, x_adv):
  d = np.asarray(x_adv) - np.asarray(x)
  scale = np.maximum(np.abs(d).reshape(len(d), -1).max(1), 1e-12).reshape(-1, 1, 1, 1)
  return 0.5 + 0.5 * d / scale


def run(config, workdir: str, data_dir: str | None = None) -> Dict[str, Any]:
  """Loads (or trains) the classifier, runs the attacks, writes tables and figures."""
  os.makedirs(workdir, exist_ok=True)
  unknown = [a for a in config.attacks if a not in ATTACKS and a not in EXTRA]
  if unknown:
    raise InvjaxError(f"unknown attack(s) {unknown}, expected names from "
                      f"{sorted(ATTACKS) + list(EXTRA)}")
  if config.norm not in ("l2", "linf"):
    raise InvjaxError(f"config.norm must be 'l2' or 'linf', got {config.norm!r}")
  epsilons = [float(e) for e in config.epsilons]
  if not epsilons or min(epsilons) <= 0:
    raise InvjaxError(f"config.epsilons must be positive, got {epsilons}")
  train_ds = data_lib.load(config.dataset, "train", data_dir)
  test_ds = data_lib.load(config.dataset, "test", data_dir)
  model = build_classifier(config, train_ds.x.shape[1:])
  ckpt_dir = config.checkpoint_dir or os.path.join(workdir, "classifier")
  if config.train_steps > 0 and not os.path.isdir(os.path.join(ckpt_dir, train.CHECKPOINT_DIR)):
    logging.info("training a classifier in %s", ckpt_dir)
    _train_smoke(config, model, train_ds, ckpt_dir)
  variables, step = load_classifier(config, model, ckpt_dir)
  if jax.local_device_count() > 1:  # on every device: attacks split their batch over them
    variables = parallel.replicate(variables, parallel.data_mesh())

  ctx = make_context(config, model, variables)

  n = min(config.num_examples, len(test_ds))
  x_all = data_lib.to_float(test_ds.x[:n])
  y_all = jnp.asarray(test_ds.y[:n])
  pred = np.asarray(jnp.argmax(ctx.logits_fn(x_all), -1))
  correct = pred == np.asarray(y_all)
  accuracy = float(correct.mean())
  # Attack only the correctly classified examples (others are adversarial at distance 0).
  x, y = x_all[correct], y_all[correct]
  if len(x) == 0:
    raise InvjaxError("the classifier gets every selected test example wrong; nothing to attack")
  key = jax.random.PRNGKey(config.seed)

  rows, grids = [], []
  for name in config.attacks:
    if name in EXTRA:
      continue
    row, res = run_attack(name, ctx, x, y, epsilons, key)
    logging.info("%s: %s", name, row)
    rows.append(row)
    _plot_grid([x, res.x_adv, _diff_image(x, res.x_adv)],
               ["clean", name, "diff (scaled)"], os.path.join(workdir, f"grid_{name}.png"))
    grids.append(f"grid_{name}.png")

  out: Dict[str, Any] = {"checkpoint_step": step, "clean_accuracy": accuracy,
                         "num_attacked": int(len(x)), "norm": config.norm,
                         "epsilons": epsilons, "attacks": rows}
  if "invariance" in config.attacks:
    # Metamers need no correct prediction: pair the first and second half of the selection.
    half = len(x_all) // 2
    if half == 0:
      raise InvjaxError("the invariance attack needs config.num_examples >= 2")
    x1, x2 = x_all[:half], x_all[half:2 * half]
    meta = invariance.metameric_attack(ctx.encode, ctx.decode, ctx.head, x1, x2)
    out["invariance"] = {
        "same_prediction_as_x1": float(np.mean(np.asarray(meta.same_prediction))),
        "max_logit_change": float(jnp.max(jnp.abs(meta.logits_meta - meta.logits_x1))),
        "median_l2_to_x1": float(np.median(np.asarray(meta.l2_to_x1))),
        "median_l2_to_x2": float(np.median(np.asarray(meta.l2_to_x2))),
        "fraction_in_range": float(np.mean(np.asarray(meta.in_range)))}
    _plot_grid([x1, x2, meta.x_meta],
               ["x1 (class)", "x2 (nuisance)", "metamer"], os.path.join(workdir, "metamers.png"))
    grids.append("metamers.png")

  table = _markdown(rows, epsilons, config.norm) if rows else ""
  header = (f"Classifier step {step}, clean accuracy {accuracy:.3f} on {n} test images; "
            f"{len(x)} correctly classified images attacked.\n\n")
  if "invariance" in out:
    inv = out["invariance"]
    table += (f"\nInvariance attack: metamers keep x1's prediction on "
              f"{inv['same_prediction_as_x1']:.2f} of pairs (max logit change "
              f"{inv['max_logit_change']:.2e}); median L2 to x1 {inv['median_l2_to_x1']:.3f}, "
              f"to x2 {inv['median_l2_to_x2']:.3f}.\n")
  io.write_text(os.path.join(workdir, "results.md"), header + table)
  io.write_json(os.path.join(workdir, "results.json"), out)
  if rows:
    _plot_curves(rows, epsilons, config.norm, os.path.join(workdir, "success_vs_epsilon.png"))
  out["files"] = ["results.md", "results.json"] + (["success_vs_epsilon.png"] if rows else []) + grids
  print(header + table)
  return out


FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.cpu_devices:
    parallel.cpu_cores_as_devices(None if FLAGS.cpu_devices < 0 else FLAGS.cpu_devices)
  run(FLAGS.config, FLAGS.workdir, FLAGS.data_dir)


if __name__ == "__main__":
  runtime.configure()  # JAX's options as flags (--jax_compilation_cache_dir, ...)
  config_flags.DEFINE_config_file(
      "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                             "attack_smoke.py"), "Attack config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Where tables, figures (and a smoke classifier) go.")
  flags.DEFINE_string("data_dir", None, "Directory of .npz splits (default: config.dataset).")
  flags.DEFINE_integer("cpu_devices", -1, "JAX CPU devices, the attacked batch split over them: "
                       "-1 one per core (faster on a CPU, see invjax.parallel), 0 JAX's default.")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
