"""diagnostics_report on the Gaussian hybrid model of test_detection: z = (x - C) / S, whose
forward and inverse Lipschitz constants are 1 / S and S exactly and whose inverse is exact."""
import json
import os

import jax
import pytest

from invjax._src.checks import InvjaxError
from invjax.robust import diagnostics
from tests.robust.test_detection import S, _toy


def test_diagnostics_report_runs_both_reports_and_is_strict_json(tmp_path):
  clf, variables, x, y = _toy(16)
  report, md = diagnostics.diagnostics_report(
      clf, variables, x, y, key=jax.random.key(0), epsilon=0.2, num_steps=5,
      ood=("uniform", "constant"), adaptive_lambdas=(10.0,), latent_method="closed_form",
      num_iters=5, batch_size=8)
  inv = {s["set"]: s for s in report["invertibility"]["sets"]}
  assert list(inv) == ["test", "pgd", "uniform", "constant"]
  for s in inv.values():
    assert s["n"] == 16 and s["non_invertible"] == 0
    assert s["forward_lipschitz_median"] == pytest.approx(1 / S, rel=1e-4)
    assert s["inverse_lipschitz_max"] == pytest.approx(S, rel=1e-4)
    assert s["reconstruction_max"] < 1e-5
  det = report["detection"]
  assert [r["images"] for r in det["rows"]] == ["clean", "pgd", "latent (closed_form)",
                                                "adaptive (lambda 10)"]
  assert det["rows"][0]["auc"] is None  # NaN -> None: strict JSON
  assert report["clean_accuracy"] == 1.0 and det["num_attacked"] == 16
  json.dumps(report, allow_nan=False)
  assert "## Invertibility" in md and "## Likelihood detection" in md and md.count("| pgd |") == 2
  assert diagnostics.write_report(report, md, str(tmp_path)) == ["diagnostics.json",
                                                                 "diagnostics.md"]
  with open(os.path.join(tmp_path, "diagnostics.json")) as f:
    assert json.load(f)["num_examples"] == 16
  with pytest.raises(InvjaxError, match="y must have shape"):
    diagnostics.diagnostics_report(clf, variables, x, y[:3], key=jax.random.key(0))
