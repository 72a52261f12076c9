"""Training in 2 JAX processes on one machine equals training in 1 process with 2 devices.

The smoke flow training (`launch/train_flow.py`, made tiny) runs as 2 CPU processes with 1
device each (gloo collectives, a coordinator on 127.0.0.1, `jax.distributed`), stopped after
2 steps and relaunched to 4 (a resume from its checkpoint), and as 1 process with 2 devices
(`--xla_force_host_platform_device_count=2`), uninterrupted. Both see the same global
batches, so the loss curves and final parameters agree to float tolerance (only the order of
the all-reduce's sums may differ). Every subprocess has a timeout and all are killed when one
fails. Bad set-ups: a process id out of range, a coordinator that never answers, a global
batch that does not split over the global devices.
"""
import os
import shutil
import socket
import threading
import time

import jax
import numpy as np
import pytest

from invjax import data as data_lib
from invjax import parallel
from invjax import train
from invjax._src import process
from invjax._src.checks import InvjaxError
from tests import multiprocess

# 32 training images in batches of 8 (4 per epoch), 16 test images; a 1-level, 1-step Glow.
TINY = dict(num_train=32, num_test=16, batch_size=8, log_every=1, checkpoint_every=2,
            eval_batch_size=16, init_batch_size=8, warmup_steps=1, progress=False,
            **{"model.num_levels": 1, "model.num_steps": 1, "model.hidden": 8})


_free_port = multiprocess.free_port


class _Group(multiprocess.Group):
  """The flow training runs of these tests (`multiprocess.Group`)."""

  def flow(self, name, workdir, num_steps, *, num_devices=1, dist=None, extra=()):
    args = ["--config=launch/configs/flow.py:smoke", f"--workdir={workdir}",
            f"--config.num_steps={num_steps}"]
    args += [f"--config.{k}={v}" for k, v in TINY.items()] + list(extra)
    self.start(name, "launch.train_flow", args, num_devices=num_devices, dist=dist)

  def flow_pair(self, name, workdir, num_steps, extra=()):
    port = _free_port()
    for pid in (0, 1):
      self.flow(f"{name}{pid}", workdir, num_steps, dist=(port, 2, pid), extra=extra)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("multiprocess")
  group = _Group(tmp)
  # At once: 1 process x 2 devices to step 4; 2 processes x 1 device to step 2.
  group.flow("ref", tmp / "ref", 4, num_devices=2)
  group.flow_pair("first", tmp / "mp", 2)
  out = group.wait()
  first_metrics = train.read_metrics(str(tmp / "mp"))
  shutil.copytree(tmp / "mp" / "checkpoints", tmp / "mp_step2")
  # Then, with the programs compiled above in the tests' compilation cache: the relaunch of
  # the 2 processes to step 4; a process whose coordinator never answers; 2 processes given
  # a global batch of 3 for 2 devices.
  group.flow_pair("resume", tmp / "mp", 4)
  group.flow("nocoord", tmp / "bad", 4, dist=(_free_port(), 2, 1),
              extra=["--initialization_timeout=2"])
  group.flow_pair("oddbatch", tmp / "odd", 4, extra=["--config.batch_size=3"])
  out.update(group.wait(expect_failure=("nocoord", "oddbatch0", "oddbatch1")))
  return dict(out=out, tmp=tmp, first_metrics=first_metrics)


def _losses(records):
  return {r["step"]: (r["loss"], r["grad_norm"]) for r in records}


def test_two_processes_train_like_one_process_with_two_devices(runs):
  tmp = runs["tmp"]
  ref, multi = train.read_metrics(str(tmp / "ref")), train.read_metrics(str(tmp / "mp"))
  assert [r["step"] for r in ref] == [1, 2, 3, 4]
  assert [r["step"] for r in multi] == [1, 2, 3, 4]  # each step once: process 0 writes
  ref_loss, multi_loss = _losses(ref), _losses(multi)
  assert len({v[0] for v in ref_loss.values()}) == 4  # the loss changes from step to step
  for step in ref_loss:
    np.testing.assert_allclose(multi_loss[step], ref_loss[step], rtol=1e-5, err_msg=str(step))
  np.testing.assert_allclose(multi[-1]["eval/bits_per_dim"], ref[-1]["eval/bits_per_dim"],
                             rtol=1e-5)
  ref_vars, ref_step = train.restore_variables(str(tmp / "ref"))
  multi_vars, multi_step = train.restore_variables(str(tmp / "mp"))
  first_vars, _ = train.restore_variables(str(tmp / "mp_step2"))
  assert ref_step == multi_step == 4
  assert jax.tree.structure(ref_vars) == jax.tree.structure(multi_vars)
  moved = 0.0
  for a, b, c in zip(jax.tree.leaves(ref_vars), jax.tree.leaves(multi_vars),
                     jax.tree.leaves(first_vars)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
    moved = max(moved, float(np.abs(np.asarray(a) - np.asarray(c)).max()))
  assert moved > 1e-4  # steps 3-4 changed the parameters


def test_killed_two_process_run_resumes_from_its_checkpoint(runs):
  out, first = runs["out"], runs["first_metrics"]
  assert [r["step"] for r in first] == [1, 2]
  ref = _losses(train.read_metrics(str(runs["tmp"] / "ref")))
  for step, values in _losses(first).items():
    np.testing.assert_allclose(values, ref[step], rtol=1e-5)
  assert "resumed from" in out["resume0"][1] and "checkpoints/2" in out["resume0"][1]
  steps = sorted(int(s) for s in os.listdir(runs["tmp"] / "mp" / "checkpoints") if s.isdigit())
  assert steps == [2, 4]


def test_every_process_logs_once_and_only_process_0_reports(runs):
  out = runs["out"]
  assert "process 0 of 1: 2 local device(s), 2 in all (cpu)" in out["ref"][1]
  assert "process 0 of 2: 1 local device(s), 2 in all (cpu)" in out["first0"][1]
  assert "process 1 of 2: 1 local device(s), 2 in all (cpu)" in out["first1"][1]
  assert "step 2 bits_per_dim" in out["first0"][1]
  assert "step 2 bits_per_dim" not in out["first1"][1]  # process 1 logs warnings only
  assert "resumed from" not in out["resume1"][1]


def test_coordinator_that_never_answers_is_a_clear_error(runs):
  rc, log = runs["out"]["nocoord"]
  assert rc != 0
  assert "InvjaxError" in log and "did not answer within 2 s" in log, log[-3000:]
  assert "127.0.0.1:" in log and "start process 0" in log


def test_global_batch_not_divisible_by_the_global_device_count(runs):
  for pid in (0, 1):
    rc, log = runs["out"][f"oddbatch{pid}"]
    assert rc != 0
    assert ("InvjaxError: batch_size (3) must be a positive multiple of the number of devices "
            "(2 over 2 processes)") in log, log[-3000:]


def test_bad_setups_fail_before_jax_starts():
  with pytest.raises(InvjaxError, match=r"process_id 2 is out of range .* 0\.\.1"):
    process.initialize(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=2)
  with pytest.raises(InvjaxError, match="out of range"):
    process.initialize(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=-1)
  with pytest.raises(InvjaxError, match="num_processes must be >= 1"):
    process.initialize(coordinator_address="127.0.0.1:1234", num_processes=0, process_id=0)
  with pytest.raises(InvjaxError, match="missing: --num_processes, --process_id"):
    process.initialize(coordinator_address="127.0.0.1:1234")
  with pytest.raises(InvjaxError, match="host:port"):
    process.initialize(coordinator_address="localhost", num_processes=2, process_id=1)
  assert not process.initialize()  # nothing asked: one process, nothing done
  assert process.is_main_process() and not process.is_multiprocess()


def test_wait_for_coordinator_times_out_or_waits_for_a_late_one():
  port = _free_port()
  t0 = time.monotonic()
  with pytest.raises(InvjaxError, match=f"127.0.0.1:{port} did not answer within 0.5 s"):
    process.wait_for_coordinator(f"127.0.0.1:{port}", 0.5)
  assert 0.5 <= time.monotonic() - t0 < 5
  server = socket.socket()
  server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

  def listen_late():
    time.sleep(0.6)
    server.bind(("127.0.0.1", port))
    server.listen(1)

  thread = threading.Thread(target=listen_late)
  thread.start()
  try:
    waited = process.wait_for_coordinator(f"[127.0.0.1]:{port}", 10)
  finally:
    thread.join()
    server.close()
  assert 0.5 <= waited < 10


def test_global_batches_are_the_single_process_batches():
  rng = np.random.default_rng(0)
  ds = data_lib.Dataset(rng.integers(0, 255, (20, 2, 2, 1)).astype(np.uint8),
                        rng.integers(0, 3, 20).astype(np.int32), np.arange(20, dtype=np.int32))
  key = jax.random.PRNGKey(3)
  mesh = parallel.global_data_mesh()
  n = parallel.num_data_shards(mesh)
  assert parallel.process_rows(4 * n, mesh) == slice(0, 4 * n)  # one process: all rows
  want = [b for e in range(2) for b in data_lib.batches(jax.random.fold_in(key, e), ds, 4 * n)]
  got = train.batch_iterator(key, ds, 4 * n, mesh=mesh)
  for x, y in want:
    batch = next(got)
    assert batch["x"].sharding == parallel.batch_sharding(mesh)
    np.testing.assert_array_equal(np.asarray(batch["x"]), x)
    np.testing.assert_array_equal(parallel.to_host(batch["y"]), y)


def test_processes_other_than_0_write_nothing(tmp_path, monkeypatch):
  from invjax._src import io  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(process, "is_main_process", lambda: False)
  io.write_json(str(tmp_path / "results.json"), {"a": 1})
  io.save_npz(str(tmp_path / "poisoned.npz"), x=np.zeros(2))
  io.save_npy(str(tmp_path / "f.npy"), np.zeros(2))
  writer = train.MetricsWriter(str(tmp_path / "sub" / "metrics.jsonl"))
  writer.write({"step": 1, "loss": 0.5})
  writer.truncate_after(0)
  assert not os.listdir(tmp_path)
  monkeypatch.setattr(process, "is_main_process", lambda: True)
  io.write_json(str(tmp_path / "results.json"), {"a": 1})
  train.MetricsWriter(str(tmp_path / "metrics.jsonl")).write({"step": 1})
  assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl", "results.json"]
