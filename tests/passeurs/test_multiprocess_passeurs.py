"""The passeurs run in 2 JAX processes writes what it writes in 1 (`invjax.passeurs.sharding`).

The smoke config, made tiny (100 training images and 200 test images in batches of 60, the
random-convolution extractor, invjax's SVM, 2 momentum sign steps and 2 rotation steps, a
2-split audit), runs once as 1 CPU process and once as 2 CPU processes with 1 device each
(gloo collectives, a coordinator on 127.0.0.1, `tests/multiprocess.py`). Of the training
images process 0 embeds and poisons the first batch, process 1 the last, partial one alone
(padded as in one process); of the test images, 2 batches each. The poisoned `.npz` files
(their bytes and the sha256 of their arrays), the accuracies, the clean features and the
audit must be the same, and only process 0 reports.
"""
import hashlib
import json
import os

import numpy as np
import pytest

from invjax import data as data_lib
from invjax._src.checks import InvjaxError
from invjax.passeurs import sharding
from tests import multiprocess

TINY = dict(extractor="random_conv", train_limit=100, test_limit=200, batch_size=60, steps=2,
            methods="sign,rotation", sign_momentum=1.0, audit_splits=2, progress=False,
            svm_backend="invjax")
POISONED = [f"poisoned_train_{m}_k{k}.npz" for m in ("sign", "rotation") for k in (1, 2)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("passeurs_mp")
  args = lambda workdir: (["--config=launch/configs/passeurs_smoke.py", f"--workdir={workdir}"]
                          + [f"--config.{k}={v}" for k, v in TINY.items()])
  group = multiprocess.Group(tmp)
  # All at once: JAX's compilation cache is not shared across process counts on a CPU.
  group.start("one", "launch.passeurs", args(tmp / "one"))
  group.start_processes("two", "launch.passeurs", args(tmp / "two"))
  return dict(out=group.wait(), one=tmp / "one", two=tmp / "two")


def _sha256(path):
  with np.load(path) as z:
    return {k: hashlib.sha256(np.ascontiguousarray(z[k]).tobytes()).hexdigest() for k in z.files}


def test_two_processes_write_the_poisoned_sets_and_accuracies_of_one(runs):
  one, two = runs["one"], runs["two"]
  for name in POISONED:
    assert _sha256(one / name) == _sha256(two / name), name
    assert (one / name).read_bytes() == (two / name).read_bytes(), name  # byte for byte
  clean = data_lib.load("cifar10_mini", "train").x[:100].astype(np.int16)
  poisoned = data_lib.load_npz(str(two / "poisoned_train_sign_k2.npz")).x.astype(np.int16)
  assert np.abs(poisoned - clean).max() == 2  # the sets were poisoned, not copied
  keys = ("method", "steps", "public_acc", "private_acc", "linf", "mean_abs_delta")
  rows = [[{k: r[k] for k in keys} for r in json.load(open(d / "results.json"))["rows"]]
          for d in (one, two)]
  assert rows[0] == rows[1]
  by = {(r["method"], r["steps"]): r for r in rows[1]}
  assert by["sign", 2]["public_acc"] > by["clean", 0]["public_acc"]  # the poisoning worked
  assert json.load(open(one / "audit.json")) == json.load(open(two / "audit.json"))
  cache = sorted(os.listdir(one / "cache"))
  assert cache == sorted(os.listdir(two / "cache")) and len(cache) == 2
  for name in cache:
    np.testing.assert_array_equal(np.load(one / "cache" / name), np.load(two / "cache" / name))


def test_only_process_0_reports(runs):
  out = runs["out"]
  assert "process 1 of 2: 1 local device(s), 2 in all (cpu)" in out["two1"][1]
  for name in ("one", "two0"):
    assert "| sign | 2 |" in out[name][1] and "wall time" in out[name][1]
  assert "| sign | 2 |" not in out["two1"][1] and "wall time" not in out["two1"][1]


def test_batch_rows_split_whole_batches_over_processes():
  for n, bs, count in [(100, 60, 2), (200, 60, 2), (70, 50, 2), (1000, 64, 3), (7, 2, 4),
                       (5, 10, 1)]:
    blocks = [sharding.batch_rows(n, bs, process_index=p, process_count=count)
              for p in range(count)]
    rows = np.concatenate([np.arange(n)[b] for b in blocks])
    np.testing.assert_array_equal(rows, np.arange(n))  # every row once, in order
    step = min(bs, n)
    assert all(b.start % step == 0 and b.stop > b.start for b in blocks)
    batches = [-(-(b.stop - b.start) // step) for b in blocks]
    assert max(batches) - min(batches) <= 1, (n, bs, count, batches)
  with pytest.raises(InvjaxError, match=r"make 2 batch\(es\), fewer than the 3 processes"):
    sharding.batch_rows(70, 50, process_index=0, process_count=3)
  with pytest.raises(InvjaxError, match="out of range"):
    sharding.batch_rows(70, 10, process_index=2, process_count=2)


def test_row_shard_pads_a_short_block_as_the_single_process_batch():
  a = np.arange(70 * 2).reshape(70, 2)
  last = sharding.RowShard(n=70, batch_size=50, start=50, stop=70, across=True)
  got = last.take(a)
  assert got.shape == (50, 2) and last.padded == 50
  np.testing.assert_array_equal(got[:20], a[50:])
  np.testing.assert_array_equal(got[20:], np.repeat(a[-1:], 30, axis=0))
  with pytest.raises(InvjaxError, match="expected 70 rows"):
    last.take(a[:60])
  whole = sharding.shard_rows(70, 50, across_processes=True)  # one process: all rows, as is
  assert not whole.across and whole.take(a) is a and whole.gather(a) is a
  assert sharding.broadcast({"w": a}) == {"w": a} and sharding.all_agree(True)
  assert not sharding.all_agree(False)
