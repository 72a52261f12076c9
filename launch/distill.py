r"""Teacher CNN -> invertible student distillation, then the attack TRANSFER table.

  python -m launch.distill --config=launch/configs/distill.py:smoke --workdir=/tmp/distill_smoke
  python -m launch.distill --config=launch/configs/distill.py:cpu \
      --workdir=runs/distill_cifar10_cpu --data_dir=../shared/data/cifar10

1. Trains the teacher (`config.teacher`, a CNN of `invjax.nets.cnn.TEACHERS`;
   `invjax.train.recipes.train_cnn`) in `<workdir>/teacher` (or `config.teacher.workdir`: an
   existing run is loaded, a stopped one resumed).
2. Distils it into an invertible classifier (`config.student`: a flow of
   `invjax.flows.registry` + a linear head; `invjax.distill.train_student`) in
   `<workdir>/student`.
3. Reports teacher and student accuracy and their agreement on the test split.
4. The transfer table of `invjax.distill.transfer_table` (`config.attack`).
5. With `config.attack.autoattack_examples > 0`: PGD against AutoAttack on teacher and student
   side by side (`invjax.attacks.protocol.compare`), and how the student's adversarials of
   either attack transfer to the teacher.
Writes `results.json` and `transfer.md` in `--workdir`; a rerun resumes / reuses.

  python -m launch.distill --workdir=runs/compare \
      --compare=baseline=runs/distill_cifar10_cpu,jacobian=runs/distill_cifar10_cpu_jacobian

reads finished runs' `results.json` instead and writes `comparison.md` side by side.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Dict

if __package__ in (None, ""):  # `python launch/distill.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
from absl import logging
import jax

from invjax import data as data_lib
from invjax import distill as distill_lib
from invjax import flows
from invjax import parallel
from invjax import train
from invjax._src import io
from invjax.attacks import protocol
from invjax.flows import classifier as clf_lib
from invjax.nets import cnn
from invjax.train import recipes
from launch import runtime


def train_teacher(config, train_ds, test_ds, workdir: str):
  """Trains (or resumes / loads) the teacher; returns (model, variables, test accuracy)."""
  tc = config.teacher
  model = cnn.make_teacher(tc.name, config.num_classes, **dict(tc.kwargs))
  variables, accuracy = recipes.train_cnn(
      model, train_ds, test_ds, workdir,
      optimizer=train.make_optimizer(**train.optimizer_kwargs(tc)), augment=tc.augment,
      seed=config.seed, mesh=parallel.maybe_data_mesh(config.data_parallel),
      progress=config.progress, **train.loop_kwargs(tc))
  return model, variables, accuracy


def distill_student(config, teacher_fn, train_ds, test_ds, workdir: str):
  """Distils `teacher_fn` into the configured invertible classifier (resumable)."""
  del test_ds
  sc = config.student
  image_shape = tuple(train_ds.x.shape[1:])
  model = clf_lib.make_classifier(flows.from_config(sc.model, image_shape), config.num_classes,
                                  image_shape, head=sc.head)
  loop = {k: sc[k] for k in ("log_every", "checkpoint_every", "max_to_keep") if k in sc}
  variables, student_fn = distill_lib.train_student(
      model, teacher_fn, train_ds, workdir,
      optimizer=train.make_optimizer(**train.optimizer_kwargs(sc)), num_steps=sc.num_steps,
      batch_size=sc.batch_size, seed=config.seed,
      init_batch_size=sc.init_batch_size, input_offset=sc.input_offset,
      temperature=sc.temperature, alpha=sc.alpha, augment=sc.augment,
      jacobian_weight=sc.jacobian_weight, jacobian_class=sc.jacobian_class,
      jacobian_temperature=sc.jacobian_temperature, loop_options=loop,
      progress=config.progress, mesh=parallel.maybe_data_mesh(config.data_parallel))
  return model, variables, student_fn


def run_experiment(config, workdir: str, data_dir: str | None = None) -> Dict[str, Any]:
  """The whole pipeline; returns (and writes) the results dict."""
  t_start = time.time()
  os.makedirs(workdir, exist_ok=True)
  train_ds, test_ds = runtime.load_splits(config, data_dir)
  teacher_dir = config.teacher.workdir or os.path.join(workdir, "teacher")
  teacher, teacher_vars, teacher_acc = train_teacher(config, train_ds, test_ds, teacher_dir)
  teacher_fn = jax.jit(cnn.logits_fn(teacher, teacher_vars))
  student, student_vars, student_fn = distill_student(
      config, teacher_fn, train_ds, test_ds, os.path.join(workdir, "student"))
  x_test = data_lib.to_float(test_ds.x)
  results = {"teacher_accuracy": float(teacher_acc),
             **distill_lib.fidelity(teacher_fn, student_fn, x_test, test_ds.y)}
  logging.info("teacher acc %.4f, student acc %.4f, agreement %.4f",
               results["teacher_accuracy"], results["student_accuracy"], results["agreement"])
  ac = config.attack
  table = distill_lib.transfer_table(
      teacher_fn, student, student_vars, student_fn, x_test, test_ds.y, norms=ac.norms,
      epsilons=ac.epsilons, num_examples=ac.num_examples, batch_size=ac.batch_size,
      pgd_steps=ac.pgd_steps, latent_method=ac.latent_method, latent_kappa=ac.latent_kappa,
      latent_decode_step=ac.latent_decode_step, latent_unconstrained=ac.latent_unconstrained,
      latent_candidates=ac.latent_candidates, lipschitz_examples=ac.lipschitz_examples,
      input_offset=config.student.input_offset, seed=config.seed + 2)
  results.update(transfer=table.rows, num_attacked=table.num_attacked,
                 student_local_lipschitz=table.lipschitz, input_gradient_cosine=table.cosine)
  if ac.autoattack_examples:
    n = min(int(ac.autoattack_examples), len(x_test))
    rows = protocol.compare(
        {"teacher": teacher_fn, "student": student_fn}, x_test[:n], test_ds.y[:n],
        key=jax.random.PRNGKey(config.seed + 3), budgets=list(zip(ac.norms, ac.epsilons)),
        pgd_steps=ac.pgd_steps, attack_steps=ac.autoattack_steps,
        square_queries=ac.autoattack_queries, batch_size=ac.batch_size, transfer_to="teacher",
        log=logging.info)
    results["autoattack"] = {"num_examples": n, "pgd_steps": ac.pgd_steps,
                             "rows": [r.to_json() for r in rows]}
  results["wall_s"] = time.time() - t_start
  io.write_text(os.path.join(workdir, "transfer.md"), distill_lib.markdown(results))
  io.write_json(os.path.join(workdir, "results.json"), results)
  return results


FLAGS = flags.FLAGS


def main(argv):
  runtime.start(argv)
  if FLAGS.compare:
    runtime.echo(distill_lib.compare_runs(FLAGS.compare, FLAGS.workdir))
    return
  results = run_experiment(FLAGS.config, FLAGS.workdir, FLAGS.data_dir)
  runtime.echo(distill_lib.markdown(results))
  runtime.echo(f"({results['wall_s']:.1f} s)")


if __name__ == "__main__":
  runtime.configure()  # JAX's options as flags (--jax_compilation_cache_dir, ...)
  runtime.define_flags("distill.py:smoke")
  runtime.define_cpu_devices_flag(
      0, "JAX CPU devices: 0 JAX's default (one); -1 one per core: the transfer attacks split "
      "their batches over them (faster), and with config.data_parallel='auto' training runs "
      "data-parallel (its numbers then depend on the core count).")
  flags.DEFINE_string("compare", None, "name=dir,name=dir,...: only compare finished runs "
                      "(their results.json) side by side, into <workdir>/comparison.md.")
  app.run(main)
