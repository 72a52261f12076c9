"""AutoAttack's evaluation (`launch/evaluate.py`) in 2 JAX processes writes the robustness.json
of 1 process (`invjax.attacks.autoattack(..., across_processes=True)`).

A tiny classifier is trained once in the test's own process (20 steps on the embedded mini
CIFAR-10, into a shared checkpoint directory); then 2 CPU processes with 1 device each (gloo, a
coordinator on 127.0.0.1, `tests/multiprocess.py`) restore it and, at the same time, the test's
process (`launch.evaluate.run`, the single-process reference) restores it too; both evaluate
the same 16 test images at L_inf 1/255 with small budgets, one attacked point per chunk so
that each process attacks its block of the chunks of every attack. The numbers
(clean and robust accuracy, every attack's points attacked and broken, evaluation counts,
which attack broke each point, the flags) must be those of the single process, written once.
"""
import json

import pytest

from invjax import data as data_lib
from launch import attack
from launch import evaluate
from launch.configs import evaluate as evaluate_config
from tests import multiprocess

MODEL = dict(num_levels=1, num_steps=1, hidden=8)
TINY = dict(train_steps=20, batch_size=32, num_examples=16, attack_steps=3, square_queries=30,
            attack_batch_size=1, epsilons=(1 / 255,))


def _without_seconds(obj):
  if isinstance(obj, dict):
    return {k: _without_seconds(v) for k, v in obj.items() if k != "seconds"}
  if isinstance(obj, list):
    return [_without_seconds(v) for v in obj]
  return obj


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("evaluate_mp")
  config = evaluate_config.get_config("smoke")
  config.model.update(**MODEL)
  config.update(dict(TINY, checkpoint_dir=str(tmp / "classifier")))
  train_ds, test_ds = (data_lib.load(config.dataset, split) for split in ("train", "test"))
  attack.load_or_train(config, config.checkpoint_dir, train_ds, test_ds)  # the classifier
  args = ["--config=launch/configs/evaluate.py:smoke", f"--workdir={tmp / 'two'}",
          f"--config.checkpoint_dir={tmp / 'classifier'}", f"--config.epsilons=({1 / 255!r},)"]
  args += [f"--config.model.{k}={v}" for k, v in MODEL.items()]
  args += [f"--config.{k}={v}" for k, v in TINY.items() if k != "epsilons"]
  group = multiprocess.Group(tmp)
  group.start_processes("two", "launch.evaluate", args)
  # While they run (JAX's compilation cache is not shared across process counts on a CPU):
  try:
    evaluate.run(config, str(tmp / "one"))  # the single-process reference
  finally:
    out = group.wait()
  return dict(out=out, tmp=tmp)


def test_two_processes_write_the_robustness_json_of_one(runs):
  tmp = runs["tmp"]
  one, two = (json.load(open(tmp / d / "robustness.json")) for d in ("one", "two"))
  assert _without_seconds(two) == _without_seconds(one)
  (ev,) = one["evaluations"]
  assert ev["num_examples"] == 16 and ev["clean_accuracy"] > 0
  attacked = [a["num_attacked"] for a in ev["attacks"]]
  assert attacked[0] >= 2  # at least one chunk of the first attack on each process
  assert sum(a["num_broken"] for a in ev["attacks"]) > 0  # the attacks broke points
  assert (tmp / "two" / "robustness.md").read_text() == (tmp / "one" / "robustness.md").read_text()


def test_only_process_0_prints_the_table(runs):
  out = runs["out"]
  assert "process 1 of 2: 1 local device(s), 2 in all (cpu)" in out["two1"][1]
  assert "| linf | 0.003922 |" in out["two0"][1]
  assert "| linf |" not in out["two1"][1]
