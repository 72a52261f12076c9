"""Launch scripts end to end on the embedded data: CLI run, metrics, checkpoints, resume."""
import json
import os
import subprocess
import sys

import pytest

from invjax import train
from launch import train_classifier, train_flow
from launch.configs import classifier_smoke, flow_smoke

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Even tinier than the smoke configs: 64 training / 32 test images, 3 steps.
TINY = dict(num_train=64, num_test=32, batch_size=16, num_steps=3, log_every=1,
            checkpoint_every=2, eval_batch_size=32, init_batch_size=16, warmup_steps=1,
            progress=False)
TINY_MODELS = {
    "flow": dict(num_levels=1, num_steps=1, hidden=8),
    "classifier": dict(num_blocks=(1,), hidden=8),
}


def _cli(script, config, workdir, model_overrides, extra_flags=()):
  flags = [f"--config.{k}={v}" for k, v in TINY.items()] + list(extra_flags)
  flags += [f"--config.model.{k}={v}" for k, v in model_overrides.items()]
  cmd = [sys.executable, os.path.join(ROOT, "launch", script), f"--config={config}",
         f"--workdir={workdir}"] + flags
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _tiny_config(module, kind):
  config = module.get_config()
  config.update(TINY)
  config.model.update(TINY_MODELS[kind])
  config.num_steps = 5
  return config


@pytest.mark.parametrize("kind", ["flow", "classifier"])
def test_launch_then_resume(kind, tmp_path):
  script, module, config_file = {
      "flow": ("train_flow.py", flow_smoke, "launch/configs/flow.py:smoke"),
      "classifier": ("train_classifier.py", classifier_smoke,
                     "launch/configs/classifier.py:smoke"),
  }[kind]
  workdir = str(tmp_path / kind)
  # JAX's own options are flags of every launch script (`jax.config.config_with_absl`).
  cache = tmp_path / "jax_cache"
  proc = _cli(script, config_file, workdir, TINY_MODELS[kind],
              [f"--jax_compilation_cache_dir={cache}",
               "--jax_persistent_cache_min_compile_time_secs=0"])
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  assert cache.is_dir() and any(cache.iterdir()), "--jax_compilation_cache_dir was not used"
  if kind == "flow":
    # The same command again restores the finished run (no step redone); launch.runtime
    # keeps orbax's INFO records (dozens per restore) out of the log.
    again = _cli(script, config_file, workdir, TINY_MODELS[kind])
    assert again.returncode == 0, again.stderr[-4000:]
    orbax_info = [line for line in again.stderr.splitlines()
                  if line.startswith("I") and "checkpoint_manager.py" in line]
    assert not orbax_info, orbax_info[:3]
    assert "resumed from" in again.stderr, again.stderr[-4000:]
  want = "test bits/dim" if kind == "flow" else "test accuracy"
  assert want in proc.stdout, proc.stdout
  records = train.read_metrics(workdir)
  assert [r["step"] for r in records] == [1, 2, 3]
  assert all(r["loss"] == r["loss"] for r in records)  # finite, logged each step
  ckpts = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert ckpts == [2, 3]

  # A second invocation with more steps resumes at step 3 (no step redone).
  runner = train_flow if kind == "flow" else train_classifier
  results = runner.train_and_evaluate(_tiny_config(module, kind), workdir)
  assert results["step"] == 5
  steps = [r["step"] for r in train.read_metrics(workdir)]
  assert steps == [1, 2, 3, 4, 5], steps  # steps 1-3 kept, not re-run
  with open(os.path.join(workdir, "results.json")) as f:
    saved = json.load(f)
  key = "test_bits_per_dim" if kind == "flow" else "test_accuracy"
  assert saved[key] == results[key]
  if kind == "flow":
    assert 0.0 < results[key] < 16.0
  else:
    assert 0.0 <= results[key] <= 1.0
