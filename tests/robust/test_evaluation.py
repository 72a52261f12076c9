"""The certification report: its Lipschitz rows against radii computed by hand from the logits,
its smoothing rows against `smoothing.certify` called directly, the attack check, the files."""
import json
import os

import jax
import numpy as np
import pytest

from invjax import InvjaxError
from invjax.robust import evaluation
from invjax.robust import smoothing
from invjax.robust.certificates import certified_lipschitz
from invjax.train import recipes

SHAPE = (4, 4, 2)
KEY = jax.random.PRNGKey(0)


def _setup(n=12):
  spec = recipes.classifier_spec(
      {"name": "lipschitz_resnet", "stages": (1, 1), "hidden": 4, "coeff": 0.8},
      num_classes=3, image_shape=SHAPE, head="slice", input_offset=-0.5)
  model = recipes.build_classifier(spec)
  x = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (n,) + SHAPE))
  variables = model.init(jax.random.PRNGKey(2), x - 0.5)
  logits = np.asarray(model.apply(variables, x - 0.5)[0], np.float64)
  y = np.argmax(logits, 1)
  y[:3] = (y[:3] + 1) % 3  # three misclassified points
  return model, variables, x, y, logits


def test_report_matches_hand_radii_and_direct_smoothing(tmp_path):
  model, variables, x, y, logits = _setup()
  radii = (0.0, 0.01, 0.05)
  report, curves = evaluation.certification_report(
      model, variables, x, y, key=KEY, radii=radii, methods=("lipschitz", "smoothing"),
      input_offset=-0.5, sigma=0.1, num_selection=20, num_samples=300, batch_size=100,
      attack_examples=6, attack_steps=10, attack_restarts=2)
  lip = certified_lipschitz(model, variables).lipschitz
  top = np.sort(logits, 1)
  correct = np.argmax(logits, 1) == y
  radius = np.where(correct, (top[:, -1] - top[:, -2]) / (np.sqrt(2) * lip), 0.0)
  expect = [np.mean(correct & (radius >= r)) for r in radii]
  entry = report["methods"]["lipschitz"]
  np.testing.assert_allclose(entry["certified_accuracy"], expect, atol=1e-9)
  assert entry["lipschitz"] == pytest.approx(lip)
  assert report["clean_accuracy"] == pytest.approx(np.mean(correct)) == pytest.approx(0.75)
  check = entry["attack_check"]
  assert check["examples"] == min(6, int(np.sum(radius > 0))) and check["violations"] == 0
  # smoothing: the same noise as a direct call with the report's key fold
  fn = jax.jit(lambda v: model.apply(variables, v - 0.5)[0])
  direct = smoothing.certify(fn, x, key=jax.random.fold_in(KEY, 2), sigma=0.1,
                             num_selection=20, num_samples=300, batch_size=100)
  np.testing.assert_allclose(report["methods"]["smoothing"]["certified_accuracy"],
                             smoothing.certified_accuracy(direct, y, radii))
  assert set(curves) == {f"Lipschitz (L = {lip:.3g})", "smoothing (sigma = 0.1)"}
  files = evaluation.write_report(report, str(tmp_path), curves=curves)
  assert files == ["certification.json", "certification.md", "certified_curve.png"]
  for f in files:
    assert os.path.getsize(tmp_path / f) > 0
  saved = json.loads((tmp_path / "certification.json").read_text())
  assert saved["methods"]["lipschitz"]["certified_accuracy"] == entry["certified_accuracy"]
  table = (tmp_path / "certification.md").read_text()
  assert "| lipschitz |" in table and "| smoothing |" in table and "0 of" in table


def test_smoothing_only_reports_clean_accuracy_and_bad_methods_raise():
  model, variables, x, y, logits = _setup(n=6)
  report, _ = evaluation.certification_report(
      model, variables, x, y, key=KEY, radii=(0.0,), methods=("smoothing",),
      input_offset=-0.5, sigma=0.1, num_selection=10, num_samples=50, batch_size=50)
  assert report["clean_accuracy"] == pytest.approx(np.mean(np.argmax(logits, 1) == y))
  assert list(report["methods"]) == ["smoothing"]
  with pytest.raises(InvjaxError, match="methods"):
    evaluation.certification_report(model, variables, x, y, key=KEY, radii=(0.1,),
                                    methods=("ibp",))
