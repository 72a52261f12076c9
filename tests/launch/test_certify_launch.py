"""launch/certify.py on a tiny certified classifier trained by launch/train_classifier.py."""
import json
import os

from launch import certify
from launch import train_classifier
from launch.configs import certify as certify_config
from launch.configs import classifier


def test_certify_launch_writes_the_report(tmp_path):
  clf = classifier.get_config("smoke,model=certified")
  clf.update(dict(num_train=128, num_test=32, num_steps=6, batch_size=16, warmup_steps=2,
                  log_every=3, checkpoint_every=6, init_batch_size=32, progress=False))
  clf.model.stages = (1,)
  ckpt = str(tmp_path / "clf")
  trained = train_classifier.train_and_evaluate(clf, ckpt)
  assert "certified_accuracy" in trained  # the margin loss reports its certificate

  config = certify_config.get_config("smoke")
  config.update(dict(checkpoint_dir=ckpt, num_examples=16, num_samples=100, num_selection=10,
                     batch_size=100, attack_examples=4, attack_steps=5, attack_restarts=1))
  workdir = str(tmp_path / "cert")
  out = certify.run(config, workdir)
  assert out["files"] == ["certification.json", "certification.md", "certified_curve.png"]
  with open(os.path.join(workdir, "certification.json")) as f:
    saved = json.load(f)
  assert saved["num_examples"] == 16 and saved["checkpoint_step"] == 6
  for name in ("lipschitz", "smoothing"):
    acc = saved["methods"][name]["certified_accuracy"]
    assert len(acc) == len(config.radii) and all(0.0 <= a <= 1.0 for a in acc)
  chk = saved["methods"]["lipschitz"].get("attack_check")
  assert chk is None or chk["violations"] == 0
