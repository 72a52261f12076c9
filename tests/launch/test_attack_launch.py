"""End-to-end run of launch/attack.py on a tiny self-trained invertible classifier."""
import json
import os

import pytest

from invjax._src.checks import InvjaxError
from launch import attack
from launch.configs import attack_smoke


def _tiny_config():
  config = attack_smoke.get_config()
  config.model.num_levels = 1
  config.model.num_steps = 1
  config.model.hidden = 8
  config.train_steps = 20
  config.batch_size = 32
  config.num_examples = 24
  config.attacks = ("fgsm", "latent_closed_form", "latent_jacobian", "latent_jacobian_linear",
                    "invariance")
  config.epsilons = (2 / 255, 8 / 255, 32 / 255)
  config.latent_iters = 2
  return config


def test_attack_launch_end_to_end(tmp_path):
  config = _tiny_config()
  out = attack.run(config, str(tmp_path))
  for name in out["files"]:
    assert os.path.getsize(tmp_path / name) > 0, name
  with open(tmp_path / "results.json") as f:
    saved = json.load(f)
  assert saved["checkpoint_step"] == config.train_steps
  rows = {r["attack"]: r for r in saved["attacks"]}
  assert set(rows) == {"fgsm", "latent_closed_form", "latent_jacobian", "latent_jacobian_linear"}
  eps = [str(float(e)) for e in config.epsilons]
  for name in ("latent_closed_form", "latent_jacobian", "latent_jacobian_linear"):
    curve = [rows[name]["success"][e] for e in eps]
    assert curve == sorted(curve), (name, curve)  # thresholded: monotone in epsilon
    assert rows[name]["success_unbounded"] >= 0.9
    if name.endswith("_linear"):  # the latent target decoded to first order: no decoder pass
      assert rows[name]["num_inverse_evals"] == 0
    else:
      assert rows[name]["num_inverse_evals"] >= 1
  # Both latent attacks reach the boundary; the Jacobian-aware one minimises the image
  # distance of the config's norm (L_inf), so it lands closer in that norm.
  assert config.norm == "linf"
  assert rows["latent_jacobian"]["median_linf"] <= rows["latent_closed_form"]["median_linf"]
  inv = saved["invariance"]
  assert inv["same_prediction_as_x1"] == 1.0 and inv["max_logit_change"] < 1e-2
  info = saved["information"]  # nats; H(y) - CE <= H(y) <= log 10
  assert info["num_examples"] == 24 and 0.0 < info["label_entropy"] <= 2.31
  assert info["logit_ce_bound"] <= info["label_entropy"] + 1e-6
  assert info["nuisance_dims"] > 0 and all(v == v for v in info.values())  # no NaN
  table = (tmp_path / "results.md").read_text()
  assert "| latent_jacobian |" in table and "Label information" in table


def test_attack_launch_rejects_bad_config(tmp_path):
  config = _tiny_config()
  config.attacks = ("pgd", "deepfool")
  with pytest.raises(InvjaxError, match="unknown attack"):
    attack.run(config, str(tmp_path))
  config = _tiny_config()
  config.epsilons = (-0.1,)
  with pytest.raises(InvjaxError, match="epsilons"):
    attack.run(config, str(tmp_path))
