"""launch/certify.py on tiny models: a certified classifier trained by launch/train_classifier.py,
and a Parseval CNN that the launcher trains itself (its `train` path)."""
import json
import os

from launch import certify
from launch import train_classifier
from launch.configs import certify as certify_config
from launch.configs import classifier
from launch.configs import cnn


def _tiny_cnn(get_config):
  def tiny(arg):
    config = get_config(arg)
    config.update(dict(num_train=64, num_test=16, num_steps=4, batch_size=16, warmup_steps=1,
                       log_every=2, checkpoint_every=4, progress=False))
    config.model.widths = (4, 4, 4)
    return config
  return tiny


def test_certify_launch_writes_one_table_for_two_models(tmp_path, monkeypatch):
  clf = classifier.get_config("smoke,model=certified")
  clf.update(dict(num_train=128, num_test=32, num_steps=6, batch_size=16, warmup_steps=2,
                  log_every=3, checkpoint_every=6, init_batch_size=32, progress=False))
  clf.model.stages = (1,)
  ckpt = str(tmp_path / "clf")
  trained = train_classifier.train_and_evaluate(clf, ckpt)
  assert "certified_accuracy" in trained  # the margin loss reports its certificate

  monkeypatch.setattr(certify.cnn, "get_config", _tiny_cnn(cnn.get_config))
  config = certify_config.get_config("smoke")
  config.models.certified.checkpoint_dir = ckpt
  config.update(dict(num_examples=12, num_samples=60, num_selection=10, batch_size=60,
                     attack_examples=4, attack_steps=5, attack_restarts=1))
  workdir = str(tmp_path / "cert")
  del config.models["noise"]  # a smoothing-only row of a CNN: as parseval's smoothing row (time)
  out = certify.run(config, workdir)
  assert out["files"] == ["certification.json", "certification.md", "certified_curve.png"]
  assert os.path.isfile(os.path.join(workdir, "parseval", "model.json"))
  with open(os.path.join(workdir, "certification.json")) as f:
    saved = json.load(f)
  assert saved["num_examples"] == 12 and set(saved["models"]) == {"certified", "parseval"}
  assert saved["models"]["certified"]["checkpoint_step"] == 6
  assert saved["models"]["parseval"]["checkpoint_step"] == 4
  for rep in saved["models"].values():
    for m in rep["methods"].values():
      acc = m["certified_accuracy"]
      assert len(acc) == len(config.radii) and all(0.0 <= a <= 1.0 for a in acc)
    chk = rep["methods"].get("lipschitz", {}).get("attack_check")
    assert chk is None or chk["violations"] == 0
  table = open(os.path.join(workdir, "certification.md")).read()
  assert table.count("| parseval |") == 2 and table.count("| certified |") == 2
