"""invjax.distill.transfer: the transfer table on a student that is its own teacher (transfer
must then equal the white-box success, the gradient cosine 1), and the run comparison."""
import json
import os

import jax
import numpy as np
import pytest

from invjax import data
from invjax import distill
from invjax import flows
from invjax.flows import classifier as clf_lib


def _student():
  test = data.load("cifar10_mini", "test")
  x, y = data.to_float(test.x[:48]), test.y[:48]
  flow = flows.build("glow", (32, 32, 3), num_levels=1, num_steps=1, hidden=8,
                     coupling="additive")
  model = clf_lib.make_classifier(flow, 10, (32, 32, 3), head="slice")
  variables = model.init({"params": jax.random.PRNGKey(0), "logdet": jax.random.PRNGKey(0)},
                         x[:16] - 0.5)
  student_fn = jax.jit(distill.student_logits_fn(model, variables, input_offset=0.5))
  return model, variables, student_fn, np.asarray(x), np.asarray(y)


def test_a_student_attacked_as_its_own_teacher():
  model, variables, fn, x, y = _student()
  pred = np.asarray(fn(x)).argmax(1)
  table = distill.transfer_table(
      fn, model, variables, fn, x, y, norms=("linf", "l2"), epsilons=(8 / 255, 0.5),
      num_examples=8, batch_size=8, pgd_steps=3, latent_method="closed_form",
      latent_kappa=(0.0, 1.0), latent_unconstrained=True, lipschitz_examples=2,
      input_offset=0.5)
  assert table.num_attacked == min(8, int((pred == y).sum()))
  # (i), (ii), two margins and one unconstrained latent row per budget
  assert len(table.rows) == 2 * 5, [r["attack"] for r in table.rows]
  for r in table.rows:
    if r["attack"].startswith(("(i) ", "(ii) ")):  # the attacked model is the teacher
      assert r["success_on_teacher"] == r["success_on_attacked"], r
  assert table.cosine["median"] == pytest.approx(1.0, abs=1e-4)
  lip = table.lipschitz
  assert lip["encode"] * lip["decode"] >= 0.99, lip  # an invertible map, both directions
  results = {"teacher_accuracy": 0.5, "student_accuracy": 0.5, "agreement": 1.0,
             "num_attacked": table.num_attacked, "transfer": table.rows,
             "input_gradient_cosine": table.cosine, "student_local_lipschitz": lip}
  text = distill.markdown(results)
  assert "(iii) latent (closed_form, kappa=1)" in text and "no epsilon" in text


def _results(student_acc, cosine, rows):
  return {"teacher_accuracy": 0.8, "student_accuracy": student_acc, "agreement": 0.9,
          "input_gradient_cosine": {"median": cosine, "mean": cosine},
          "transfer": [{"budget": b, "attack": a, "success_on_teacher": t,
                        "success_on_attacked": w} for b, a, t, w in rows]}


def test_compare_runs_puts_matching_attacks_side_by_side(tmp_path):
  base = _results(0.70, 0.1, [("linf", "(ii) PGD", 0.4, 1.0), ("l2", "(ii) PGD", 0.15, 0.9)])
  jac = _results(0.75, 0.25, [("l2", "(ii) PGD", 0.34, 0.8), ("l2", "(iii) latent", 0.2, 0.7)])
  for name, res in (("b", base), ("j", jac)):
    os.makedirs(tmp_path / name)
    with open(tmp_path / name / "results.json", "w") as f:
      json.dump(res, f)
  table = distill.compare_runs(f"base={tmp_path / 'b'},jac={tmp_path / 'j'}",
                               str(tmp_path / "cmp"))
  assert open(tmp_path / "cmp" / "comparison.md").read() == table
  lines = table.splitlines()
  assert lines[0] == "| | base | jac |"
  assert "| student accuracy | 0.7000 | 0.7500 |" in lines
  assert "| input-gradient cosine (median) | 0.100 | 0.250 |" in lines
  # matched by (budget, attack), whichever order the runs list them in; "-" where absent
  assert "| linf: (ii) PGD | 0.400 (1.00) | - |" in lines
  assert "| l2: (ii) PGD | 0.150 (0.90) | 0.340 (0.80) |" in lines
  assert "| l2: (iii) latent | - | 0.200 (0.70) |" in lines
  with pytest.raises(FileNotFoundError, match="results.json"):
    distill.compare_runs(f"missing={tmp_path / 'nope'}", str(tmp_path / "cmp"))
  with pytest.raises(ValueError, match="name=dir"):
    distill.compare_runs(str(tmp_path / "b"), str(tmp_path / "cmp"))
