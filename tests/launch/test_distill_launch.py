"""launch/distill.py end to end on a slice of the embedded data: teacher, student, transfer table."""
import json
import os

import numpy as np

from invjax import data
from launch import distill
from launch import runtime
from launch.configs import distill_smoke


def _tiny_config():
  config = distill_smoke.get_config()
  config.num_train, config.num_test, config.progress = 128, 64, False
  config.teacher.update(dict(num_steps=6, batch_size=32, warmup_steps=2, log_every=3,
                             checkpoint_every=3, eval_batch_size=64))
  config.student.update(dict(num_steps=4, batch_size=32, warmup_steps=2, log_every=2,
                             checkpoint_every=2, init_batch_size=32))
  config.attack.update(dict(num_examples=8, batch_size=8, pgd_steps=3, lipschitz_examples=4))
  # one budget per run (time): L2 here, L_inf in the second run
  config.attack.norms, config.attack.epsilons = ("l2",), (0.5,)
  return config


def test_distill_launch_writes_the_transfer_table_and_resumes(tmp_path):
  config = _tiny_config()
  workdir = str(tmp_path)
  results = distill.run_experiment(config, workdir)
  assert 0.0 <= results["teacher_accuracy"] <= 1.0
  assert 0.0 <= results["agreement"] <= 1.0
  assert 0 < results["num_attacked"] <= 8
  rows = results["transfer"]
  # per budget: (i) PGD on the teacher, (ii) PGD on the student, (iii) the latent attack
  # within the budget and without a projection
  assert len(rows) == 4 * len(config.attack.norms), [r["attack"] for r in rows]
  for r in rows:
    if r["attack"].startswith("(i) "):  # white-box on the teacher: both columns are the teacher
      assert r["success_on_attacked"] == r["success_on_teacher"]
    budget = r["budget"]
    if "no epsilon" in r["attack"]:
      continue
    if budget.startswith("linf"):
      assert r["median_linf_255"] <= 8.0 + 1e-3, r
    else:
      assert r["median_l2"] <= 0.5 + 1e-4, r
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["transfer"] == rows
  table = open(os.path.join(workdir, "transfer.md")).read()
  assert "(iii) latent" in table and "no epsilon" in table
  # an invertible map's local Lipschitz constants in the two directions multiply to >= 1
  lip = results["student_local_lipschitz"]
  assert lip["encode"] > 0 and lip["decode"] > 0 and lip["encode"] * lip["decode"] >= 0.99, lip
  assert "encode" in table
  cosine = results["input_gradient_cosine"]
  assert -1.0 <= cosine["median"] <= 1.0 and -1.0 <= cosine["mean"] <= 1.0, cosine
  assert "input-gradient cosine" in table

  assert "autoattack" not in results  # autoattack_examples 0 in the smoke config

  # A second run reuses both finished trainings (same accuracies) and takes a tuple of
  # latent margins: one (iii) row per kappa; it also puts PGD and AutoAttack side by side.
  config.attack.latent_kappa = (0.0, 2.0)
  config.attack.norms, config.attack.epsilons = ("linf",), (8 / 255,)
  config.attack.update(dict(autoattack_examples=8, autoattack_steps=3, autoattack_queries=20))
  again = distill.run_experiment(config, workdir)
  aa = again["autoattack"]
  assert aa["num_examples"] == 8 and [r["model"] for r in aa["rows"]] == ["teacher", "student"]
  teacher_row, student_row = aa["rows"]
  assert teacher_row["transfer_autoattack"] is None
  if teacher_row["clean_accuracy"] == 0:  # the 6-step teacher may get none of the 8 right
    assert student_row["transfer_autoattack"] is None
  else:
    assert 0.0 <= student_row["transfer_autoattack"] <= 1.0
  for r in aa["rows"]:
    assert 0.0 <= r["autoattack_robust_accuracy"] <= r["clean_accuracy"] <= 1.0
  assert "AutoAttack robust" in open(os.path.join(workdir, "transfer.md")).read()
  assert again["teacher_accuracy"] == results["teacher_accuracy"]
  assert again["agreement"] == results["agreement"]
  names = [r["attack"] for r in again["transfer"]]
  assert sum("kappa=0)" in n for n in names) == 1 and sum("kappa=2)" in n for n in names) == 1
  assert sum("no epsilon" in n for n in names) == 1
  assert np.isfinite([r["median_l2"] for r in again["transfer"]]).all()


def test_distill_student_with_jacobian_matching(tmp_path):
  """config.student.jacobian_weight reaches the loss: its metrics are logged."""
  config = _tiny_config()
  config.student.jacobian_weight = 1.0
  train_ds, test_ds = runtime.load_splits(config, None)
  w = np.random.RandomState(0).randn(32 * 32 * 3, 10).astype(np.float32) / 50
  teacher_fn = lambda x: (x.reshape(x.shape[0], -1) - 0.5) @ w
  _, _, student_fn = distill.distill_student(config, teacher_fn, train_ds, test_ds, str(tmp_path))
  assert student_fn(data.to_float(test_ds.x[:2])).shape == (2, 10)
  with open(os.path.join(str(tmp_path), "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  cos = [m["grad_cosine"] for m in logged if "grad_cosine" in m]
  jac = [m["jacobian"] for m in logged if "jacobian" in m]
  assert cos and jac and all(-1.0 <= c <= 1.0 for c in cos) and all(0 <= j <= 4 for j in jac)
