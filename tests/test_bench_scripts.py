"""bench/accelerator.sh is well formed: its steps' scripts, flags and config overrides exist.

No step runs here (`--dry_run` prints the commands): the modules and flags are checked against
the scripts' sources (their `flags.DEFINE_*` calls) and the `--config.a.b=v` overrides against
the configs the commands load, so a renamed flag or config field fails here, not on a GPU.
`bench/accelerator_report.py` is checked on a made-up run.
"""
import ast
import importlib
import json
import os
import re
import shlex
import subprocess

import pytest

from bench import accelerator_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "accelerator.sh")
STEPS = ["flow", "classifier", "distill", "attacks", "flows", "features", "passeurs", "svm"]
_DEFINE = re.compile(r"DEFINE_(\w+)\(\s*\"(\w+)\"")


def _dry_run(*args):
  proc = subprocess.run(["bash", SCRIPT, "--dry_run", "--python", "python3", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=30)
  assert proc.returncode == 0, proc.stderr
  rows = [line.split("\t") for line in proc.stdout.splitlines() if line.strip()]
  assert all(len(r) == 3 for r in rows), proc.stdout
  return [(name, int(limit), shlex.split(cmd)) for name, limit, cmd in rows]


def _source(path):
  with open(os.path.join(ROOT, path)) as f:
    return f.read()


def _defined_flags(script_path):
  """{flag name: DEFINE kind} a script defines, with those of launch.runtime it calls for."""
  src = _source(script_path)
  found = {name: kind for kind, name in _DEFINE.findall(src)}
  runtime = _source("launch/runtime.py")
  if "runtime.define_flags(" in src:
    found.update(config="config_file", workdir="string", data_dir="string")
  if "runtime.define_cpu_devices_flag(" in src:
    found["cpu_devices"] = "integer"
  if "runtime.configure()" in src:  # the multi-process flags (and JAX's own, --jax_*)
    body = runtime.split("def define_distributed_flags", 1)[1].split("\ndef ", 1)[0]
    found.update({name: kind for kind, name in _DEFINE.findall(body)})
  return found


def _script_of(argv):
  assert argv[0] == "python3", argv
  if argv[1] == "-m":
    return argv[2].replace(".", "/") + ".py", argv[3:]
  return argv[1], argv[2:]


def _config_of(spec):
  """`launch/configs/flow.py:smoke` -> the ConfigDict that file builds."""
  path, _, arg = spec.partition(":")
  module = importlib.import_module(path[:-len(".py")].replace("/", "."))
  return module.get_config(arg)


def _override(config, dotted, value):
  """Sets `config.<dotted>` to `value` parsed as the type of the field, which must exist."""
  *parents, leaf = dotted.split(".")
  node = config
  for part in parents:
    assert part in node, f"--config.{dotted}: no field {part!r}"
    node = node[part]
  assert leaf in node, f"--config.{dotted}: no field {leaf!r}"
  old = node[leaf]
  if isinstance(old, bool):
    assert value.lower() in ("true", "false"), f"--config.{dotted}={value}: not a bool"
    new = value.lower() == "true"
  elif isinstance(old, (int, float)):
    new = type(old)(value)
  elif isinstance(old, tuple):
    new = ast.literal_eval(value)
    assert isinstance(new, tuple), f"--config.{dotted}={value}: not a tuple"
  else:
    new = value
  node[leaf] = new


def _check_training_lengths(config, where="config"):
  """What the optimiser refuses at start-up: a warm-up as long as the run."""
  if "num_steps" in config and "warmup_steps" in config and config.get("learning_rate"):
    assert config["warmup_steps"] < config["num_steps"], f"{where}: warmup >= num_steps"
  for key in ("teacher", "student"):
    if key in config:
      _check_training_lengths(config[key], f"{where}.{key}")


@pytest.mark.parametrize("mode", ["gpu", "cpu_smoke"])
def test_steps_call_existing_scripts_flags_and_config_fields(mode):
  subprocess.run(["bash", "-n", SCRIPT], check=True, timeout=30)
  steps = _dry_run(*(["--cpu_smoke"] if mode == "cpu_smoke" else []))
  assert [s[0] for s in steps] == STEPS
  if mode == "gpu":  # one device call: under 10 minutes, all limits together
    assert sum(limit for _, limit, _ in steps) <= 570
  for name, _, argv in steps:
    script, args = _script_of(argv)
    assert os.path.isfile(os.path.join(ROOT, script)), (name, script)
    defined = _defined_flags(script)
    config = None
    for arg in args:
      assert arg.startswith("--"), (name, arg)
      flag, _, value = arg[2:].partition("=")
      if flag == "config":
        config = _config_of(value)
      elif flag.startswith("config."):
        assert config is not None, f"{name}: --{flag} before --config"
        _override(config, flag[len("config."):], value)
      elif flag not in defined:
        assert flag.startswith("no") and defined.get(flag[2:]) == "bool", (name, flag)
    if "config" in defined:
      assert config is not None, f"{name}: no --config"
      _check_training_lengths(config)


def test_only_and_unknown_arguments():
  assert [s[0] for s in _dry_run("--only", "svm,flows")] == ["flows", "svm"]
  for bad in (["--only", "nope"], ["--frobnicate"]):
    proc = subprocess.run(["bash", SCRIPT, "--dry_run", *bad], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and "accelerator.sh" in proc.stderr


def test_report_summarises_speed_tables_and_missing_modules(tmp_path):
  run = tmp_path / "flow"
  (run / "student").mkdir(parents=True)
  records = [{"step": 5, "loss": 3.0, "time/steps_per_sec": 1.0},
             {"step": 10, "loss": 2.5, "time/steps_per_sec": 4.0}, {"step": 10, "eval/x": 1}]
  (run / "student" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
  md = tmp_path / "features.md"
  md.write_text("intro\n\n| resolution | B | pass | invjax images/s | invjax / PyTorch |\n"
                "|---|---|---|---|---|\n| 64x64 | 8 | forward | 10.0 | 2.50x |\n")
  log = tmp_path / "svm.log"
  log.write_text("Traceback ...\nModuleNotFoundError: No module named 'liblinear'\n")
  (tmp_path / "hw.txt").write_text("GPU: none")
  tsv = tmp_path / "steps.tsv"
  rows = [("flow", "train", "ok", "12.3", "90", str(run), "", str(tmp_path / "none.log"), "c1"),
          ("features", "feat", "ok", "5", "45", "", str(md), "", "c2"),
          ("svm", "svm", "failed (rc 1)", "1", "40", "", "", str(log), "c3")]
  tsv.write_text("\n".join("\t".join(r) for r in rows) + "\n")
  text = accelerator_report.assemble(str(tsv), str(tmp_path / "hw.txt"), "T")
  lines = text.splitlines()
  assert lines[0] == "# T" and "GPU: none" in text
  flow_row = next(l for l in lines if l.startswith("| flow |"))
  assert "student: 4.00 steps/s, loss 2.5 at step 10" in flow_row and "| 12 (90) |" in flow_row
  feat_row = next(l for l in lines if l.startswith("| features |"))
  assert "64x64 forward: 2.50x (invjax / pytorch)" in feat_row
  assert "failed (rc 1): no module liblinear" in next(l for l in lines if l.startswith("| svm |"))
  assert "* svm: `c3`" in text and "| 64x64 | 8 | forward | 10.0 | 2.50x |" in text
  with pytest.raises(ValueError, match="tab-separated"):
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n")
    accelerator_report.read_steps(str(bad))


def test_normflows_peer_models_match_the_invjax_smoke_models():
  """bench/flows_peer.py builds the invjax smoke i-ResNet's architecture in normflows: the same
  number of weights (an independent count: invjax's variables vs the torch module's), and a
  Glow whose log-density trains."""
  torch = pytest.importorskip("torch")
  pytest.importorskip("normflows", reason="normflows is only the benchmark's peer")
  import jax
  import numpy as np
  from bench import flows_peer
  from invjax.flows import iresnet

  model = iresnet.smoke()
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct(
      (1, 32, 32, 3), np.float32))
  ours = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes["params"]))
  assert flows_peer.num_params(flows_peer.iresnet()) == ours
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    row = flows_peer.timed_train("glow", flows_peer.glow(num_steps=1, hidden=8), x, 2, 1)
  finally:
    torch.set_num_threads(threads)
  assert row[1] > 0 and np.isfinite(row[5]) and np.isfinite(row[6]) and row[2] > 0
  assert 5.0 < row[5] < 12.0  # bits/dim of near-uniform noise under a fresh flow
