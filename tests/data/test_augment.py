"""flip_and_crop against a per-example numpy reference drawing the same flips and offsets."""
import jax
import numpy as np
import pytest

from invjax import InvjaxError
from invjax import data


def _reference(key, x, pad):
  b = x.shape[0]
  k_flip, k_crop = jax.random.split(key)
  flips = np.asarray(jax.random.bernoulli(k_flip, 0.5, (b,)))
  offsets = np.asarray(jax.random.randint(k_crop, (b, 2), 0, 2 * pad + 1))
  out = []
  for img, f, (i, j) in zip(np.asarray(x), flips, offsets):
    img = img[:, ::-1] if f else img
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    out.append(padded[i:i + img.shape[0], j:j + img.shape[1]])
  return np.stack(out), flips, offsets


@pytest.mark.parametrize("pad", [0, 2, 4])
def test_flip_and_crop_matches_numpy(pad):
  x = data.to_float(data.load("cifar10_mini", "test").x[:16])
  key = jax.random.PRNGKey(3)
  got = np.asarray(jax.jit(lambda k, v: data.flip_and_crop(k, v, pad=pad))(key, x))
  want, flips, offsets = _reference(key, x, pad)
  np.testing.assert_array_equal(got, want)
  assert 0 < flips.sum() < len(flips)  # both branches exercised
  if pad:
    assert len({tuple(o) for o in offsets}) > 1


def test_flip_and_crop_rejects_bad_input():
  with pytest.raises(InvjaxError, match="NHWC"):
    data.flip_and_crop(jax.random.PRNGKey(0), np.zeros((4, 32, 32), np.float32))
  with pytest.raises(InvjaxError, match="pad"):
    data.flip_and_crop(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 3), np.float32), pad=-1)
