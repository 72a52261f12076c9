"""launch/train_cnn.py end to end on a tiny slice of the embedded data: the CLI with
`parseval`, results.json (singular values at 1 after the retraction, checked here with a
numpy SVD of the restored weights), and the plain variant in process."""
import json
import os
import subprocess
import sys

import numpy as np

from invjax import train
from launch import train_cnn
from launch.configs import cnn as cnn_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(num_train=64, num_test=32, batch_size=16, num_steps=4, log_every=2,
            checkpoint_every=4, eval_batch_size=32, warmup_steps=1, progress=False)


def test_cli_parseval_then_plain(tmp_path):
  workdir = str(tmp_path / "parseval")
  flags = [f"--config.{k}={v}" for k, v in TINY.items()] + ["--config.model.widths=(8,16)"]
  cmd = [sys.executable, os.path.join(ROOT, "launch", "train_cnn.py"),
         "--config=launch/configs/cnn.py:smoke,parseval", f"--workdir={workdir}"] + flags
  proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  assert "test accuracy" in proc.stdout and "(parseval)" in proc.stdout, proc.stdout
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["parseval"] and results["step"] == 4
  assert len(results["layers"]) == 7
  assert results["max_singular_value"] <= 1 + 1e-2
  variables, step = train.restore_variables(workdir)
  assert step == 4
  head = np.asarray(variables["params"]["head"]["kernel"], np.float64)
  np.testing.assert_allclose(np.linalg.svd(head, compute_uv=False).max(),
                             results["layers"]["head/kernel"][0], atol=1e-5)

  config = cnn_config.get_config("smoke")
  config.update(TINY)
  config.model.widths = (8, 16)
  plain = train_cnn.train_and_evaluate(config, str(tmp_path / "plain"))
  assert not plain["parseval"] and 0.0 <= plain["test_accuracy"] <= 1.0
