"""launch/diagnose.py on a tiny hybrid Glow that the launcher trains itself (its `train` path)."""
import json
import os

from launch import diagnose
from launch.configs import classifier
from launch.configs import diagnose as diagnose_config


def _tiny_glow(get_config):
  def tiny(arg):
    config = get_config(arg)
    config.update(dict(num_train=64, num_test=16, num_steps=4, batch_size=16, warmup_steps=1,
                       log_every=2, checkpoint_every=4, init_batch_size=32, progress=False))
    config.model.update(dict(num_levels=1, num_steps=1, hidden=4))
    return config
  return tiny


def test_diagnose_launch_trains_then_writes_both_tables(tmp_path, monkeypatch):
  monkeypatch.setattr(diagnose.classifier, "get_config", _tiny_glow(classifier.get_config))
  config = diagnose_config.get_config("smoke")
  assert config.train == "smoke,model=glow"
  # tiny: 12 images, 2 attack steps, no tfds import (svhn's skip is test_invertibility's);
  # every image attacked, since a 4-step classifier may get none right
  config.update(dict(num_examples=12, num_steps=2, num_iters=2, batch_size=12,
                     adaptive_lambdas=(1.0,), latent_method="closed_form",
                     ood=("uniform", "constant"), only_correct=False))
  workdir = str(tmp_path / "diag")
  out = diagnose.run(config, workdir)
  assert out["files"] == ["diagnostics.json", "diagnostics.md"]
  assert out["checkpoint_step"] == 4 and out["model"]["flow"]["name"] == "glow"
  assert os.path.isfile(os.path.join(workdir, "classifier", "model.json"))
  with open(os.path.join(workdir, "diagnostics.json")) as f:
    saved = json.load(f)
  assert saved["num_examples"] == 12 and saved["detection"]["num_attacked"] == 12
  assert [s["set"] for s in saved["invertibility"]["sets"]] == ["test", "pgd", "uniform",
                                                                "constant"]
  assert [r["images"] for r in saved["detection"]["rows"]] == [
      "clean", "pgd", "latent (closed_form)", "adaptive (lambda 1)"]
  for r in saved["detection"]["rows"][1:]:
    assert 0.0 <= r["auc"] <= 1.0 and r["n"] == 12
  table = open(os.path.join(workdir, "diagnostics.md")).read()
  assert table.count("| pgd |") == 2 and "| adaptive (lambda 1) | 12 |" in table
