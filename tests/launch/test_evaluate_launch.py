"""End-to-end run of launch/evaluate.py on a tiny self-trained invertible classifier: AutoAttack
at two epsilons, robustness.json and robustness.md."""
import json
import os

import pytest

from invjax._src.checks import InvjaxError
from launch import evaluate
from launch.configs import evaluate as evaluate_config
from tests.attacks.test_ensemble import STAND_INS


@pytest.fixture(scope="module", name="classifier_dir")
def _classifier_dir(tmp_path_factory):
  """One tiny classifier for the module (trained by the first run, reused by the others)."""
  return str(tmp_path_factory.mktemp("classifier"))


def _tiny_config(classifier_dir, arg="smoke"):
  config = evaluate_config.get_config(arg)
  config.model.update(num_levels=1, num_steps=1, hidden=8)
  config.checkpoint_dir = classifier_dir
  config.train_steps = 20
  config.batch_size = 32
  config.num_examples = 16
  config.attack_steps = 3
  config.square_queries = 30
  config.attack_batch_size = 8  # two batches of attacked points
  return config


def _check_outputs(out, workdir, config):
  for name in out["files"]:
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  with open(os.path.join(workdir, "robustness.json")) as f:
    saved = json.load(f)
  assert saved["checkpoint_step"] == config.train_steps
  assert saved["norm"] == config.norm and saved["version"] == "standard"
  assert saved["eps"] == pytest.approx(config.epsilons[0])
  assert saved["num_examples"] == config.num_examples
  evals = saved["evaluations"]
  assert [e["epsilon"] for e in evals] == pytest.approx(list(config.epsilons))
  for e in evals:
    assert [a["name"] for a in e["attacks"]] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert 0.0 <= e["robust_accuracy"] <= e["clean_accuracy"] <= 1.0
    assert e["clean_accuracy"] == saved["clean_acc"]
    broken = sum(a["num_broken"] for a in e["attacks"])
    assert e["robust_accuracy"] == pytest.approx(e["clean_accuracy"] - broken / 16)
    assert set(e["flags"]) <= set(saved["flags"])
  assert evals[-1]["robust_accuracy"] <= evals[0]["robust_accuracy"]  # larger epsilon
  assert saved["autoattack_acc"] == evals[0]["robust_accuracy"]
  assert saved["budgets"]["apgd-ce"]["num_steps"] == 3
  assert saved["budgets"]["square"]["num_queries"] == 30
  table = open(os.path.join(workdir, "robustness.md")).read()
  assert table.count(f"| {config.norm} |") == len(config.epsilons) and "| square |" in table
  return saved


@pytest.mark.parametrize("arg", ["smoke", "smoke,norm=l2"])
def test_evaluate_launch_end_to_end(tmp_path, classifier_dir, arg):
  config = _tiny_config(classifier_dir, arg)
  out = evaluate.run(config, str(tmp_path), attacks=STAND_INS)  # the real ones once merged
  saved = _check_outputs(out, str(tmp_path), config)
  assert saved["threat_model"] == {"smoke": "Linf", "smoke,norm=l2": "L2"}[arg]
  assert saved["architecture"] == "glow"


def test_evaluate_launch_with_the_real_attacks(tmp_path, classifier_dir):
  config = _tiny_config(classifier_dir)
  _check_outputs(evaluate.run(config, str(tmp_path)), str(tmp_path), config)


def test_evaluate_launch_rejects_bad_config(tmp_path, classifier_dir):
  config = _tiny_config(classifier_dir)
  config.norm = "l1"
  with pytest.raises(InvjaxError, match="norm"):
    evaluate.run(config, str(tmp_path))
  config = _tiny_config(classifier_dir)
  config.epsilons = (-0.1,)
  with pytest.raises(InvjaxError, match="epsilons"):
    evaluate.run(config, str(tmp_path))
  with pytest.raises(ValueError, match="norm must be one of"):
    evaluate_config.get_config("smoke,norm=l1")
