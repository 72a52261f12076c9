r"""Teacher CNN -> invertible student distillation, then the attack TRANSFER table.

  python -m launch.distill --config=launch/configs/distill_smoke.py --workdir=/tmp/distill_smoke
  python -m launch.distill --config=launch/configs/distill_cifar10.py \
      --workdir=runs/distill --data_dir=../shared/data/cifar10

1. Trains the teacher (`config.teacher`, a CNN from `invjax.nets.cnn.TEACHERS`)
   in `<workdir>/teacher` (or `config.teacher.workdir`: an existing run is
   loaded, a stopped one resumed).
2. Distils it into an invertible classifier (`config.student`: a flow from
   `launch.train_flow.FLOWS` + a linear head) in `<workdir>/student`.
3. Reports teacher accuracy, student accuracy and teacher/student agreement on
   the test split.
4. On the first `config.attack.num_examples` test images that the teacher
   classifies correctly, for each norm/epsilon, the success rate *on the teacher* of
     (i)   PGD on the teacher (white-box upper bound),
     (ii)  PGD on the student, adversarials evaluated on the teacher (transfer),
     (iii) the latent-inversion attack on the student, evaluated on the teacher, one
           row per logit margin in `config.attack.latent_kappa` (a number or a tuple) and
           per `config.attack.latent_decode_step` ("exact" / "linear"), and one without
           the epsilon ball when `config.attack.latent_unconstrained`
           (skipped with a message when `invjax.attacks.latent` is unavailable),
   with the white-box success on the attacked model and median distances, and the
   cosine between student and teacher input gradients on those images.
   `config.student.jacobian_weight > 0` adds Jacobian matching to the distillation
   (`invjax.distill`), which aims at exactly that cosine.
Writes `results.json` and `transfer.md` in `--workdir`; a rerun resumes/reuses.

  python -m launch.distill --workdir=runs/compare \
      --compare=baseline=runs/distill_cifar10_cpu,jacobian=runs/distill_cifar10_cpu_jacobian

reads finished runs' `results.json` instead and writes `comparison.md`: their accuracies,
agreement and input-gradient cosine, and each attack's success on the teacher side by side.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple

if __package__ in (None, ""):  # `python launch/distill.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from invjax import data as data_lib
from invjax._src import io
from invjax import distill as distill_lib
from invjax import parallel
from invjax import train
from invjax.attacks import gradient
from invjax.attacks import latent as latent_lib
from invjax.flows import classifier as clf_lib
from invjax.nets import cnn
from invjax.robust import lipschitz
from launch import runtime
from launch import train_flow


def _augment(key, x):
  """Random horizontal flips and 4-pixel reflect-padded random crops (NHWC floats)."""
  b, h, w, c = x.shape
  k_flip, k_crop = jax.random.split(key)
  flip = jax.random.bernoulli(k_flip, 0.5, (b,))
  x = jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)
  padded = jnp.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
  offsets = jax.random.randint(k_crop, (b, 2), 0, 9)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
  return jax.vmap(crop)(padded, offsets)


def _batched(fn: Callable[[jax.Array], jax.Array], x: np.ndarray, bs: int) -> np.ndarray:
  return np.concatenate([np.asarray(fn(jnp.asarray(x[i:i + bs]))) for i in range(0, len(x), bs)])


def train_teacher(config, train_ds, test_ds, workdir: str):
  """Trains (or resumes / loads) the teacher; returns (model, variables, test accuracy)."""
  tc = config.teacher
  model = cnn.make_teacher(tc.name, config.num_classes, **dict(tc.get("kwargs", {})))
  key = jax.random.PRNGKey(config.seed)
  variables = jax.jit(lambda k: cnn.init(model, k, train_ds.x.shape[1:]))(key)
  params, model_state = train.split_variables(variables)
  optimizer = train_flow.make_optimizer(tc)
  state = train.TrainState.create(params, optimizer, jax.random.fold_in(key, 1), model_state)
  logging.info("teacher %s: %d parameters", tc.name,
               sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)))
  loss_fn = cnn.make_loss_fn(model, augment_fn=_augment if tc.augment else None,
                             weight_decay=tc.get("l2", 0.0))
  step = train.make_train_step(loss_fn, optimizer, mutable=True, donate=True)
  eval_step = train.make_eval_step(cnn.make_metric_fn(model))
  state, metrics = train.train_loop(tc, state, step, train_ds, workdir, eval_step=eval_step,
                                    eval_dataset=test_ds, progress=config.progress,
                                    mesh=train_flow.maybe_mesh(config))
  return model, state.variables, metrics["accuracy"]


def distill_student(config, teacher_fn, train_ds, test_ds, workdir: str):
  """Distils `teacher_fn` into the configured invertible classifier (resumable)."""
  sc = config.student
  image_shape = tuple(train_ds.x.shape[1:])
  flow = train_flow.build_flow(sc.model, image_shape)
  model = clf_lib.make_classifier(flow, config.num_classes, image_shape, head=sc.head)
  key = jax.random.PRNGKey(config.seed + 1)
  x_init = data_lib.to_float(train_ds.x[:sc.init_batch_size]) - sc.input_offset
  variables = jax.jit(model.init)({"params": key, "logdet": key}, x_init)
  logging.info("student %s/%s: %d parameters", sc.model.name, sc.head,
               sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"])))
  loop_cfg = {k: sc[k] for k in ("log_every", "checkpoint_every", "max_to_keep") if k in sc}
  variables, _ = distill_lib.distill(
      model, variables, teacher_fn, train_ds, key=jax.random.fold_in(key, 1),
      num_steps=sc.num_steps, batch_size=sc.batch_size, optimizer=train_flow.make_optimizer(sc),
      temperature=sc.temperature, alpha=sc.alpha, input_offset=sc.input_offset,
      augment_fn=_augment if sc.augment else None,
      jacobian_weight=sc.get("jacobian_weight", 0.0),
      jacobian_class=sc.get("jacobian_class", "teacher"),
      jacobian_temperature=sc.get("jacobian_temperature", 1.0), workdir=workdir, config=loop_cfg,
      progress=config.progress, mesh=train_flow.maybe_mesh(config))
  student_fn = jax.jit(distill_lib.student_logits_fn(model, variables,
                                                     input_offset=sc.input_offset))
  return model, variables, student_fn


def _row(name: str, results: List[Any], teacher_fn, x, y, seconds: float) -> Dict[str, Any]:
  """Success on the attacked model (white-box) and on the teacher, median distances."""
  x_adv = np.concatenate([np.asarray(r.x_adv) for r in results])
  white = np.concatenate([np.asarray(r.success) for r in results])
  on_teacher = _batched(teacher_fn, x_adv, 256).argmax(1) != y
  l2 = np.concatenate([np.asarray(r.l2) for r in results])
  linf = np.concatenate([np.asarray(r.linf) for r in results])
  return {"attack": name, "success_on_attacked": float(white.mean()),
          "success_on_teacher": float(on_teacher.mean()),
          "median_l2": float(np.median(l2)), "median_linf_255": float(np.median(linf) * 255),
          "seconds": seconds}


def transfer_table(config, teacher_fn, student_model, student_vars, student_fn, test_ds):
  """The (i)/(ii)/(iii) rows for every (norm, epsilon) of `config.attack`."""
  ac = config.attack
  x_all = data_lib.to_float(test_ds.x)
  pred = _batched(teacher_fn, np.asarray(x_all), 256).argmax(1)
  keep = np.where(pred == test_ds.y)[0][:ac.num_examples]
  x, y = np.asarray(x_all)[keep], test_ds.y[keep]
  logging.info("attacking %d test images the teacher classifies correctly", len(keep))
  bs = ac.batch_size
  off = config.student.input_offset
  encode = lambda v: student_model.apply(student_vars, v - off, method="encode")
  decode = lambda z: student_model.apply(student_vars, z, method="decode") + off
  head = student_model.apply(student_vars, method="linear_head")
  if jax.local_device_count() > 1:  # an argument of the attacks next to the split batch
    head = parallel.replicate(head, parallel.data_mesh())
  rows = []
  key = jax.random.PRNGKey(config.seed + 2)
  # One (iii) row per latent margin: kappa > 0 lands past the student's boundary, which
  # is what lets an adversarial example transfer to the teacher.
  kappas = tuple(np.atleast_1d(ac.latent_kappa).astype(float))
  # "exact" decodes the latent target, "linear" takes its first-order image (a row each).
  decode_steps = tuple(np.atleast_1d(ac.get("latent_decode_step", "exact")))

  def run(name, attack):
    t0 = time.time()
    results = []
    for i in range(0, len(x), bs):
      k = jax.random.fold_in(key, i)  # the batch split over the local devices (if several)
      res = parallel.call_sharded(lambda xb, yb: attack(xb, yb, k), x[i:i + bs], y[i:i + bs])
      jax.block_until_ready(res.x_adv)
      results.append(res)
    return _row(name, results, teacher_fn, x, y, time.time() - t0)

  for norm, eps in zip(ac.norms, ac.epsilons):
    pgd_kw = dict(epsilon=eps, norm=norm, num_steps=ac.pgd_steps, step_size=2.5 * eps / ac.pgd_steps,
                  num_restarts=1)
    tag = f"{norm} eps={eps * 255:.1f}/255" if norm == "linf" else f"{norm} eps={eps:g}"
    rows.append({"budget": tag, **run("(i) PGD on teacher", lambda xb, yb, k: gradient.pgd(
        teacher_fn, xb, yb, key=k, early_stop=True, **pgd_kw))})
    rows.append({"budget": tag, **run("(ii) PGD on student -> teacher", lambda xb, yb, k: gradient.pgd(
        student_fn, xb, yb, key=k, early_stop=False, **pgd_kw))})
    budgets = []
    for step in decode_steps:
      budgets += [(kappa, eps, step) for kappa in kappas]
      if ac.get("latent_unconstrained", False):  # where the step lands without a projection
        budgets.append((kappas[0], None, step))
    for kappa, ball, step in budgets:
      name = (f"(iii) latent ({ac.latent_method}, kappa={kappa:g}"
              + (", linear decode" if step == "linear" else "")
              + ("" if ball else ", no epsilon") + ") on student -> teacher")
      rows.append({"budget": tag, **run(
          name, lambda xb, yb, k, kappa=kappa, ball=ball, step=step: latent_lib.latent_attack(
              encode, decode, head, xb, yb, key=k, method=ac.latent_method, epsilon=ball,
              norm=norm, kappa=kappa, num_candidates=ac.get("latent_candidates", None) or None,
              decode_step=step))})
  # How far the student's attack directions point the teacher's way: the cosine of the
  # two models' input gradients of log p(true class) on the attacked images.
  cosine = distill_lib.gradient_cosine(teacher_fn, student_fn, x, y, batch_size=bs)
  cosine = {"median": float(np.median(cosine)), "mean": float(np.mean(cosine))}
  lip = {}
  if ac.get("lipschitz_examples", 0):
    # Local Lipschitz lower bounds (power iteration on J^T J) of the student's bijection
    # in both directions at the first attacked images: how much a latent step can move
    # the image (decode), and an image step the latent (encode).
    xs = jnp.asarray(x[:ac.lipschitz_examples])
    lip = {name: float(np.median(np.asarray(lipschitz.local_lipschitz(
        fn, pts, key=jax.random.fold_in(key, j), num_iters=20))))
           for j, (name, fn, pts) in enumerate((("encode", encode, xs),
                                                ("decode", decode, encode(xs))))}
  return rows, len(keep), lip, cosine


def markdown(results: Dict[str, Any]) -> str:
  lines = [f"teacher accuracy {results['teacher_accuracy']:.4f} | student accuracy "
           f"{results['student_accuracy']:.4f} | agreement {results['agreement']:.4f} | "
           f"{results['num_attacked']} attacked images"]
  cosine = results.get("input_gradient_cosine")
  if cosine:
    lines[0] += (" | input-gradient cosine student/teacher (log p(y), median / mean) "
                 f"{cosine['median']:.3f} / {cosine['mean']:.3f}")
  lip = results.get("student_local_lipschitz") or {}
  if lip:
    lines[0] += (" | student local Lipschitz (median, lower bounds): encode "
                 f"{lip['encode']:.3g}, decode {lip['decode']:.3g}")
  lines += ["",
           "| budget | attack | success on attacked model | success on teacher | median L2 | "
           "median Linf (/255) | time (s) |", "|---|---|---|---|---|---|---|"]
  for r in results["transfer"]:
    lines.append(f"| {r['budget']} | {r['attack']} | {r['success_on_attacked']:.3f} | "
                 f"{r['success_on_teacher']:.3f} | {r['median_l2']:.3f} | "
                 f"{r['median_linf_255']:.2f} | {r['seconds']:.1f} |")
  return "\n".join(lines) + "\n"


def comparison_markdown(runs: Sequence[Tuple[str, Dict[str, Any]]]) -> str:
  """Finished runs side by side: one column per run, success on the teacher per attack
  (and, in parentheses, on the model it was crafted on).

  Args:
    runs: (name, results dict of `run_experiment`) pairs. Attacks are matched by budget
      and name, in the order they first appear; a run without one gets "-" there.
  """
  if not runs:
    raise ValueError("comparison_markdown needs at least one (name, results) pair")

  def row(label, fn):
    return f"| {label} | " + " | ".join(fn(r) for _, r in runs) + " |"

  lines = ["| | " + " | ".join(name for name, _ in runs) + " |", "|---" * (len(runs) + 1) + "|"]
  for key in ("teacher_accuracy", "student_accuracy", "agreement"):
    lines.append(row(key.replace("_", " "), lambda r, key=key: f"{r[key]:.4f}"))
  lines.append(row("input-gradient cosine (median)", lambda r: (
      f"{r['input_gradient_cosine']['median']:.3f}" if r.get("input_gradient_cosine") else "-")))
  lines.append("| **success on the teacher (on the attacked model)** |" + " |" * len(runs))
  order = []
  for _, r in runs:
    for t in r["transfer"]:
      if (t["budget"], t["attack"]) not in order:
        order.append((t["budget"], t["attack"]))
  for budget, attack in order:
    def cell(r, budget=budget, attack=attack):
      found = [t for t in r["transfer"] if (t["budget"], t["attack"]) == (budget, attack)]
      if not found:
        return "-"
      return f"{found[0]['success_on_teacher']:.3f} ({found[0]['success_on_attacked']:.2f})"
    lines.append(row(f"{budget}: {attack}", cell))
  return "\n".join(lines) + "\n"


def compare_runs(spec: str, workdir: str) -> str:
  """`--compare=name=dir,...`: reads each dir's results.json, writes `comparison.md`."""
  runs = []
  for item in spec.split(","):
    name, sep, run_dir = item.partition("=")
    if not sep or not name or not run_dir:
      raise ValueError(f"--compare wants name=dir pairs separated by commas, got {item!r}")
    path = os.path.join(run_dir, "results.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"--compare: {path} does not exist (is the run {name!r} finished?)")
    with open(path) as f:
      runs.append((name, json.load(f)))
  table = comparison_markdown(runs)
  os.makedirs(workdir, exist_ok=True)
  io.write_text(os.path.join(workdir, "comparison.md"), table)
  return table


def run_experiment(config, workdir: str, data_dir: str | None = None) -> Dict[str, Any]:
  """The whole pipeline; returns (and writes) the results dict."""
  t_start = time.time()
  os.makedirs(workdir, exist_ok=True)
  train_ds, test_ds = train_flow.load_data(config, data_dir)
  teacher_dir = config.teacher.get("workdir", "") or os.path.join(workdir, "teacher")
  teacher, teacher_vars, teacher_acc = train_teacher(config, train_ds, test_ds, teacher_dir)
  teacher_fn = jax.jit(cnn.logits_fn(teacher, teacher_vars))
  student, student_vars, student_fn = distill_student(
      config, teacher_fn, train_ds, test_ds, os.path.join(workdir, "student"))
  x_test = np.asarray(data_lib.to_float(test_ds.x))
  student_pred = _batched(student_fn, x_test, 256).argmax(1)
  results = {
      "teacher_accuracy": float(teacher_acc),
      "student_accuracy": float(np.mean(student_pred == test_ds.y)),
      "agreement": distill_lib.agreement(teacher_fn, student_fn, x_test, batch_size=256),
  }
  logging.info("teacher acc %.4f, student acc %.4f, agreement %.4f",
               results["teacher_accuracy"], results["student_accuracy"], results["agreement"])
  rows, n, lip, cosine = transfer_table(config, teacher_fn, student, student_vars, student_fn,
                                        test_ds)
  results.update(transfer=rows, num_attacked=n, student_local_lipschitz=lip,
                 input_gradient_cosine=cosine,
                 wall_s=time.time() - t_start)
  io.write_text(os.path.join(workdir, "transfer.md"), markdown(results))
  io.write_json(os.path.join(workdir, "results.json"), results)
  return results


FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.cpu_devices:
    parallel.cpu_cores_as_devices(None if FLAGS.cpu_devices < 0 else FLAGS.cpu_devices)
  if FLAGS.compare:
    print(compare_runs(FLAGS.compare, FLAGS.workdir))
    return
  results = run_experiment(FLAGS.config, FLAGS.workdir, FLAGS.data_dir)
  print(markdown(results))
  print(f"({results['wall_s']:.1f} s)")


if __name__ == "__main__":
  runtime.configure()  # JAX's options as flags (--jax_compilation_cache_dir, ...)
  train_flow.define_flags(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                                       "distill_smoke.py"))
  flags.DEFINE_integer("cpu_devices", 0, "JAX CPU devices: 0 JAX's default (one); -1 one per core: "
                       "the transfer attacks split their batches over them (faster), and with "
                       "config.data_parallel='auto' training runs data-parallel (its numbers then "
                       "depend on the core count).")
  flags.DEFINE_string("compare", None, "name=dir,name=dir,...: only compare finished runs "
                      "(their results.json) side by side, into <workdir>/comparison.md.")
  app.run(main)
