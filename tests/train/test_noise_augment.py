"""Gaussian noise augmentation (randomized smoothing's base classifier): its statistics, and
how `train_cnn` composes it with flips and crops."""
import jax
import numpy as np
import pytest

from invjax import InvjaxError
from invjax import data as data_lib
from invjax.data import augment
from invjax.train import recipes


def _x():
  return jax.random.uniform(jax.random.PRNGKey(0), (64, 8, 8, 3))


def _check_std(noise, sigma):
  n = noise.size
  noise = np.asarray(noise, np.float64).ravel()
  assert abs(noise.mean()) < 4 * sigma / np.sqrt(n)
  # the sample variance of n Gaussians has standard error sigma^2 sqrt(2 / n)
  assert abs(noise.var() - sigma ** 2) < 4 * sigma ** 2 * np.sqrt(2.0 / n)


def test_gaussian_noise_statistics():
  x = _x()
  y = augment.gaussian_noise(jax.random.PRNGKey(1), x, sigma=0.25)
  assert y.shape == x.shape and y.dtype == x.dtype
  _check_std(y - x, 0.25)
  np.testing.assert_array_equal(augment.gaussian_noise(jax.random.PRNGKey(1), x, sigma=0.0), x)
  with pytest.raises(InvjaxError, match="sigma"):
    augment.gaussian_noise(jax.random.PRNGKey(1), x, sigma=-0.1)


def test_cnn_augment_composes_flips_crops_and_noise():
  assert recipes._cnn_augment(False, 0.0) is None   # pylint: disable=protected-access
  assert recipes._cnn_augment(True, 0.0) is data_lib.flip_and_crop
  x, key = _x(), jax.random.PRNGKey(2)
  _check_std(recipes._cnn_augment(False, 0.5)(key, x) - x, 0.5)
  both = recipes._cnn_augment(True, 0.5)(key, x)
  _check_std(both - data_lib.flip_and_crop(key, x), 0.5)   # the same flips and crops
  with pytest.raises(InvjaxError, match="noise_sigma"):
    recipes._cnn_augment(False, -1.0)
