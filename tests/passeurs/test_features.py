"""Feature extractors, batched embedding and the feature cache, with a stand-in extractor; one
test runs the real EfficientNet-Lite0 on a handful of images."""
import os

import jax
import numpy as np
import pytest

from invjax import data
from invjax._src.checks import InvjaxError
from invjax.passeurs import features
from invjax.passeurs import poison


@pytest.fixture(scope="module")
def extractor():
  return features.random_conv_extractor(jax.random.PRNGKey(0), channels=8)


def _train_subset():
  """40 training images per class (the subset of test_experiment.py)."""
  train = data.load("cifar10_mini", "train")
  keep = np.concatenate([np.where(train.y == c)[0][:40] for c in range(10)])
  return train.take(np.sort(keep))


@pytest.fixture(scope="module")
def images():
  return _train_subset().x[:7]


def test_embed_matches_direct_apply_with_padding(extractor, images):
  x = images[:7]
  f = features.embed(extractor, x, batch_size=3)
  direct = np.asarray(extractor.apply(extractor.params, x.astype(np.float32) / 255.0))
  assert f.shape == (7, 128) and f.dtype == np.float32
  np.testing.assert_allclose(f, direct, rtol=1e-5, atol=1e-6)
  with pytest.raises(InvjaxError, match="uint8"):
    features.embed(extractor, x.astype(np.float32))


def test_feature_cache_reloads_from_disk(extractor, images, tmp_path):
  x = images[:5]
  f1 = features.FeatureCache(str(tmp_path)).get(extractor, x)
  assert len(list(tmp_path.glob("features_*.npy"))) == 1
  assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
  # Same name, different function: a fresh cache must read the file, not recompute.
  impostor = features.Extractor(lambda p, z: z.reshape(z.shape[0], -1)[:, :3] * 0, None,
                                extractor.name)
  np.testing.assert_array_equal(features.FeatureCache(str(tmp_path)).get(impostor, x), f1)


def test_make_extractor_by_name(images):
  a = features.make_extractor("random_conv", seed=3)
  b = features.random_conv_extractor(jax.random.PRNGKey(3))
  assert a.name == b.name and a.name != features.make_extractor("random_conv", seed=4).name
  np.testing.assert_array_equal(features.embed(a, images), features.embed(b, images))
  with pytest.raises(InvjaxError, match="extractor must be one of"):
    features.make_extractor("resnet")
  with pytest.raises(InvjaxError, match="resolution"):
    features.make_extractor("efficientnet_lite0", resolution=16)


def test_efficientnet_sign_step_on_a_handful_of_images():
  """The real network: one step moves pixels by one grey level and lowers the OvR loss of
  every image under a fixed SVM, measured by an independent uint8 forward pass."""
  from invjax.nets import efficientnet
  train = _train_subset()
  ex = features.efficientnet_extractor(32)
  x, y = train.x[:4], train.y[:4]
  rng = np.random.default_rng(0)
  w = {"w": rng.standard_normal((10, 1280)).astype(np.float32) * 0.05}
  loss = lambda z: np.asarray(poison.ovr_hinge_loss(
      efficientnet.features(ex.params, z, resolution=32) @ w["w"].T, y))
  x1 = poison.sign_step(ex.apply, ex.params, x, y, w, batch_size=4)
  assert poison.linf(x1, x) == 1 and np.mean(x1 != x) > 0.5
  assert np.all(loss(x1) < loss(x)), (loss(x), loss(x1))
