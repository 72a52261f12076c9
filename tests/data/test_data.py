"""Data loaders: embedded set, local npz directories, batching, and the errors they raise."""
import io as io_lib
import os

import jax
import numpy as np
import pytest

from invjax import data
from invjax._src.checks import InvjaxError

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "cifar10")


def test_embedded_is_balanced_real_cifar():
  tr, te = data.load("cifar10_mini", "train"), data.load("cifar10_mini", "test")
  assert tr.x.shape == (1000, 32, 32, 3) and tr.x.dtype == np.uint8
  assert te.x.shape == (500, 32, 32, 3)
  np.testing.assert_array_equal(np.bincount(tr.y, minlength=10), 100)
  np.testing.assert_array_equal(np.bincount(te.y, minlength=10), 50)
  # First official CIFAR-10 train labels: frog, truck, truck, deer, automobile, automobile, bird, ...
  np.testing.assert_array_equal(tr.y[:7], [6, 9, 9, 4, 1, 1, 2])
  assert 100 < tr.x.mean() < 140  # real photos, not noise or zeros


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="shared CIFAR-10 not present")
def test_embedded_matches_full_arrays():
  full = data.load_npz(os.path.join(SHARED, "test.npz"))
  te = data.load("cifar10_mini", "test")
  np.testing.assert_array_equal(full.x[te.index], te.x)
  np.testing.assert_array_equal(full.y[te.index], te.y)


def test_local_dir_parts_joined_in_order(tmp_path):
  tr = data.load("cifar10_mini", "train")
  data.save_npz(str(tmp_path / "train_part1.npz"), tr.take(np.arange(0, 600)))
  data.save_npz(str(tmp_path / "train_part2.npz"), tr.take(np.arange(600, 1000)))
  back = data.load("cifar10", "train", data_dir=str(tmp_path))
  np.testing.assert_array_equal(back.x, tr.x)
  np.testing.assert_array_equal(back.index, tr.index)


def test_dataset_len_take_replace():
  tr = data.load("cifar10_mini", "train")
  assert len(tr) == 1000
  sub = tr.take(np.arange(5))
  assert len(sub) == 5
  flipped = sub._replace(x=255 - sub.x)
  np.testing.assert_array_equal(flipped.x, 255 - sub.x)
  np.testing.assert_array_equal(flipped.y, sub.y)


def test_batches_deterministic_and_cover_epoch():
  tr = data.load("cifar10_mini", "train")
  key = jax.random.PRNGKey(3)
  a = [y for _, y in data.batches(key, tr, 100)]
  b = [y for _, y in data.batches(key, tr, 100)]
  c = [y for _, y in data.batches(jax.random.PRNGKey(4), tr, 100)]
  assert len(a) == 10
  np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))
  assert not np.array_equal(np.concatenate(a), np.concatenate(c))
  np.testing.assert_array_equal(np.sort(np.concatenate(a)), np.sort(tr.y))


def test_float_conversion_round_trip():
  x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  f = data.to_float(x)
  assert float(f.min()) == 0.0 and float(f.max()) == 1.0
  np.testing.assert_array_equal(data.to_uint8(f), x)
  with pytest.raises(InvjaxError, match="uint8"):
    data.to_float(np.zeros((1, 2, 2, 3), np.float32))


def test_missing_directory(tmp_path):
  with pytest.raises(InvjaxError, match="does not exist"):
    data.load("cifar10", "train", data_dir=str(tmp_path / "nope"))
  with pytest.raises(InvjaxError, match="no file for split 'train'"):
    data.load("cifar10", "train", data_dir=str(tmp_path))


@pytest.mark.parametrize("arrays,match", [
    (dict(x=np.zeros((4, 8, 8, 3), np.uint8)), r"missing array\(s\) \['y'\]"),
    (dict(x=np.zeros((4, 8, 8, 3), np.float32), y=np.zeros(4, int)), "must be uint8"),
    (dict(x=np.zeros((4, 8, 8), np.uint8), y=np.zeros(4, int)), r"shape \[N, H, W, C\]"),
    (dict(x=np.zeros((4, 8, 8, 3), np.uint8), y=np.zeros(3, int)), "must have shape"),
    (dict(x=np.zeros((4, 8, 8, 3), np.uint8), y=np.array([0, 1, 2, 10])), r"\[0, 10\)"),
])
def test_bad_files_name_file_and_problem(tmp_path, arrays, match):
  path = str(tmp_path / "test.npz")
  np.savez(path, **arrays)
  with pytest.raises(InvjaxError, match=match) as e:
    data.load("cifar10", "test", data_dir=str(tmp_path))
  assert "test.npz" in str(e.value)


def _write_corrupt(kind, path):
  good = io_lib.BytesIO()
  np.savez(good, x=np.zeros((4, 8, 8, 3), np.uint8), y=np.zeros(4, int))
  if kind == "empty":
    open(path, "wb").close()
  elif kind == "truncated":
    with open(path, "wb") as f:
      f.write(good.getvalue()[:len(good.getvalue()) // 2])
  elif kind == "not_an_archive":
    with open(path, "wb") as f:
      f.write(b"these are not the arrays you are looking for" * 10)
  elif kind == "object_array":
    np.savez(path, x=np.array([np.zeros(3), "a"], dtype=object), y=np.zeros(2, int))
  elif kind == "single_array":
    with open(path, "wb") as f:
      np.save(f, np.zeros((4, 8, 8, 3), np.uint8))


@pytest.mark.parametrize("kind,match", [
    ("empty", "empty"), ("truncated", "corrupt or truncated"),
    ("not_an_archive", "pickled|not a readable"), ("object_array", "object"),
    ("single_array", "single array"),
])
def test_unreadable_files_name_file_and_problem(tmp_path, kind, match):
  path = str(tmp_path / "test.npz")
  _write_corrupt(kind, path)
  with pytest.raises(InvjaxError, match=match) as e:
    data.load("cifar10", "test", data_dir=str(tmp_path))
  assert "test.npz" in str(e.value)
  assert "allow_pickle" not in str(e.value)  # not numpy's misleading advice


def test_save_npz_leaves_no_temporary_file(tmp_path):
  ds = data.load("cifar10_mini", "test").take(np.arange(10))
  data.save_npz(str(tmp_path / "test.npz"), ds)
  assert sorted(os.listdir(tmp_path)) == ["test.npz"]
  np.testing.assert_array_equal(data.load("x", "test", data_dir=str(tmp_path)).x, ds.x)
