"""The passeurs launch script end to end (tiny run), its configs, and the notebook's code."""
import json
import os
import subprocess
import sys

import numpy as np

from invjax import data
from launch.configs import passeurs, passeurs_cifar10, passeurs_smoke

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_smoke_launch_end_to_end(tmp_path):
  """The smoke config on 100 train / 100 test images with the random-feature extractor."""
  workdir = str(tmp_path / "run")
  flags = ["--config.extractor=random_conv", "--config.train_limit=100",
           "--config.test_limit=100", "--config.batch_size=50", "--config.steps=2",
           "--config.methods=sign,rotation", "--config.svm_backend=liblinear",
           "--config.audit_splits=2", "--config.progress=False"]
  cmd = [sys.executable, os.path.join(ROOT, "launch", "passeurs.py"),
         "--config=" + os.path.join(ROOT, "launch", "configs", "passeurs_smoke.py"),
         f"--workdir={workdir}"] + flags
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = json.load(open(os.path.join(workdir, "results.json")))["rows"]
  assert [(r["method"], r["steps"]) for r in rows] == [
      ("clean", 0), ("sign", 1), ("sign", 2), ("rotation", 1), ("rotation", 2)]
  assert all(r["linf"] <= r["steps"] for r in rows)
  for name in ("results.md", "accuracy_vs_steps.png", "examples_sign.png", "audit.md",
               "audit.json"):
    assert os.path.isfile(os.path.join(workdir, name)), name
  poisoned = data.load_npz(os.path.join(workdir, "poisoned_train_sign_k2.npz"))
  clean = data.load("cifar10_mini", "train")
  assert poisoned.x.dtype == np.uint8 and len(poisoned) == 100
  np.testing.assert_array_equal(poisoned.index, clean.index[:100])
  diff = np.abs(poisoned.x.astype(int) - clean.x[:100].astype(int))
  assert diff.max() == 2
  # The clean train and test features were cached in the workdir (one atomic .npy each).
  cache = sorted(os.listdir(os.path.join(workdir, "cache")))
  assert len(cache) == 2 and all(f.endswith(".npy") for f in cache)


def test_configs_hold_their_command():
  for module in (passeurs_smoke, passeurs_cifar10, passeurs):
    config = module.get_config()
    assert "python -m launch.passeurs --config=launch/configs/" in module.__doc__
    assert config.steps >= 1 and config.resolution >= 32
  assert passeurs_cifar10.get_config().dataset == "cifar10"
  assert "--config=launch/configs/passeurs.py:smoke" in passeurs.__doc__


def test_one_config_with_a_smoke_mode():
  """The old file names are the two modes of launch/configs/passeurs.py."""
  assert passeurs_smoke.get_config().to_dict() == passeurs.get_config("smoke").to_dict()
  assert passeurs_cifar10.get_config().to_dict() == passeurs.get_config().to_dict()
  smoke, full = passeurs.get_config("smoke"), passeurs.get_config()
  assert (smoke.dataset, smoke.resolution, smoke.steps) == ("cifar10_mini", 32, 2)
  assert (full.dataset, full.resolution, full.steps) == ("cifar10", 64, 3)
  assert smoke.public_boundary == full.public_boundary == 5000
