"""The buyer's audit: flags a training set tuned to the public test half, not a clean one."""
import jax
import numpy as np
import pytest

from invjax import data
from invjax._src.checks import InvjaxError
from invjax.data.dataset import Dataset
from invjax.passeurs import audit
from invjax.passeurs import experiment
from invjax.passeurs import features
from invjax.passeurs import poison
from invjax.passeurs import svm


@pytest.fixture(scope="module")
def setup():
  ex = features.random_conv_extractor(jax.random.PRNGKey(1), channels=8)
  train = data.load("cifar10_mini", "train")
  keep = np.sort(np.concatenate([np.where(train.y == c)[0][:40] for c in range(10)]))
  train = train.take(keep)
  test = data.load("cifar10_mini", "test")
  public = experiment.split_mask(test)
  f_test = features.embed(ex, test.x)
  w_target = svm.fit_liblinear(f_test[public], test.y[public])
  x_poison = poison.sign_poison(ex.apply, ex.params, train.x, train.y, w_target, steps=2)
  return ex, train, test, public, x_poison


def _audit(setup, x_train):
  ex, train, test, public, _ = setup
  return audit.audit_datasets(ex, Dataset(x_train, train.y, train.index), test, public,
                              fit_fn=svm.fit_liblinear, key=jax.random.PRNGKey(0),
                              num_splits=4, num_permutations=500)


def test_flags_poisoned_not_clean(setup):
  clean = _audit(setup, setup[1].x)
  poisoned = _audit(setup, setup[4])
  assert not clean.flag, clean.summary()
  assert poisoned.flag, poisoned.summary()
  assert poisoned.score > clean.score + 1
  names = {"accuracy_gap", "alignment_gap", "margin_gap", "pixel_flatness", "pixel_hf_energy"}
  assert set(poisoned.statistics) == names
  # The feature-level statistics all point the same way on the poisoned set.
  for name in ("accuracy_gap", "alignment_gap", "margin_gap"):
    assert poisoned.statistics[name]["z"] > 3, poisoned.summary()
  assert poisoned.statistics["pixel_flatness"]["value"] < 0
  assert "FLAGGED" in poisoned.summary() and "not flagged" in clean.summary()


def test_closed_form_statistics():
  w_a = np.array([[1.0, 0.0], [0.0, 2.0]])
  w_b = np.array([[1.0, 1.0], [0.0, -1.0]])
  np.testing.assert_allclose(audit.class_cosines(w_a, w_b), [np.sqrt(0.5), -1.0])
  f = np.array([[3.0, 1.0], [1.0, 2.0]])
  # unit rows of w_a are e1, e2: margins s_y - s_other.
  np.testing.assert_allclose(audit.normalized_margins(w_a, f, np.array([0, 1])), [2.0, 1.0])
  x = np.zeros((1, 2, 3, 1), np.uint8)
  x[0, 0, 0, 0] = 7  # breaks 1 of 3 horizontal pairs... of 4 horizontal and 1 of 3 vertical
  # horizontal pairs: 2 rows x 2 = 4, one unequal -> 3/4; vertical: 3, one unequal -> 2/3.
  np.testing.assert_allclose(audit.pixel_flatness(x), [(0.75 + 2 / 3) / 2])
  flat = np.full((2, 4, 4, 3), 100, np.uint8)
  assert np.all(audit.pixel_hf_energy(flat) < -6)  # log(0 + 1e-3)


def test_input_errors():
  f = np.zeros((4, 3), np.float32)
  y = np.array([0, 1, 0, 1])
  fit = svm.fit_liblinear
  with pytest.raises(InvjaxError, match="share d"):
    audit.audit(f, y, np.zeros((4, 2)), y, np.array([1, 1, 0, 0], bool), fit_fn=fit,
                key=jax.random.PRNGKey(0))
  with pytest.raises(InvjaxError, match="proper subset"):
    audit.audit(f, y, f, y, np.ones(4, bool), fit_fn=fit, key=jax.random.PRNGKey(0))
  with pytest.raises(InvjaxError, match="num_splits"):
    audit.audit(f, y, f, y, np.array([1, 1, 0, 0], bool), fit_fn=fit,
                key=jax.random.PRNGKey(0), num_splits=1)
