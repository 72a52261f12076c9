"""The evaluated pipeline (features -> SVM) and the experiment loop, with a stand-in extractor;
one test runs the real EfficientNet-Lite0 on a handful of images."""
import json
import os

import jax
import numpy as np
import pytest

from invjax import data
from invjax._src.checks import InvjaxError
from invjax.passeurs import pipeline
from invjax.passeurs import poison


@pytest.fixture(scope="module")
def extractor():
  return pipeline.random_conv_extractor(jax.random.PRNGKey(0), channels=8)


@pytest.fixture(scope="module")
def mini():
  train = data.load("cifar10_mini", "train")
  test = data.load("cifar10_mini", "test")
  keep = np.concatenate([np.where(train.y == c)[0][:40] for c in range(10)])
  return train.take(np.sort(keep)), test


@pytest.fixture(scope="module")
def experiment(extractor, mini):
  train, test = mini
  config = dict(steps=2, methods="sign,rotation", batch_size=128, svm_backend="liblinear")
  return pipeline.run_experiment(config, extractor=extractor, train=train, test=test,
                                 progress=False, log=lambda s: None)


def test_embed_matches_direct_apply_with_padding(extractor, mini):
  x = mini[0].x[:7]
  f = pipeline.embed(extractor, x, batch_size=3)
  direct = np.asarray(extractor.apply(extractor.params, x.astype(np.float32) / 255.0))
  assert f.shape == (7, 128) and f.dtype == np.float32
  np.testing.assert_allclose(f, direct, rtol=1e-5, atol=1e-6)
  with pytest.raises(InvjaxError, match="uint8"):
    pipeline.embed(extractor, x.astype(np.float32))


def test_feature_cache_reloads_from_disk(extractor, mini, tmp_path):
  x = mini[0].x[:5]
  f1 = pipeline.FeatureCache(str(tmp_path)).get(extractor, x)
  assert len(list(tmp_path.glob("features_*.npy"))) == 1
  # Same name, different function: a fresh cache must read the file, not recompute.
  impostor = pipeline.Extractor(lambda p, z: z.reshape(z.shape[0], -1)[:, :3] * 0, None,
                                extractor.name)
  np.testing.assert_array_equal(pipeline.FeatureCache(str(tmp_path)).get(impostor, x), f1)


def test_liblinear_backend_matches_reference_predictions(mini, extractor):
  from liblinear import liblinearutil
  import scipy.sparse
  f = pipeline.embed(extractor, mini[0].x[:200])
  y = mini[0].y[:200]
  params = pipeline.liblinear_fit(f, y)
  model = liblinearutil.train(y.astype(float), scipy.sparse.csr_matrix(f.astype(np.float64)),
                              "-s 1 -c 1 -B -1 -q")
  ref, _, _ = liblinearutil.predict(y.astype(float), scipy.sparse.csr_matrix(f.astype(np.float64)),
                                    model, "-q")
  # LIBLINEAR's dual CD visits samples in a random order: allow a near-tie to flip.
  agree = np.mean(np.argmax(pipeline.scores(params, f), 1) == np.asarray(ref, int))
  assert agree >= 0.98
  assert pipeline.accuracy(params, f, y) == pytest.approx(np.mean(np.asarray(ref) == y), abs=0.02)
  w_ref = np.stack([model.get_decfun(model.get_labels().index(c))[0] for c in range(10)])
  np.testing.assert_allclose(params["w"], w_ref, rtol=0.05, atol=0.05 * np.abs(w_ref).max())


def test_experiment_raises_public_not_private(experiment, mini):
  rows = experiment.rows
  assert [(r["method"], r["steps"]) for r in rows] == [
      ("clean", 0), ("sign", 1), ("sign", 2), ("rotation", 1), ("rotation", 2)]
  for r in rows:
    assert r["linf"] <= r["steps"] and 0.0 <= r["public_acc"] <= 1.0
  clean, s1, s2 = rows[0], rows[1], rows[2]
  assert s1["linf"] == 1 and s2["linf"] == 2
  public_gain = s2["public_acc"] - clean["public_acc"]
  private_gain = s2["private_acc"] - clean["private_acc"]
  assert public_gain > 0.15, rows
  assert public_gain > private_gain + 0.1, rows
  # The poisoned sets keep labels and official indices; the test set is untouched.
  p = experiment.poisoned["sign"][2]
  np.testing.assert_array_equal(p.y, mini[0].y)
  np.testing.assert_array_equal(p.index, mini[0].index)
  assert experiment.public.sum() == 250


def test_write_artifacts(experiment, tmp_path):
  paths = pipeline.write_artifacts(experiment, str(tmp_path))
  rows = json.load(open(paths["results_json"]))["rows"]
  assert len(rows) == 5 and rows[0]["method"] == "clean"
  assert "| sign | 2 |" in open(paths["results_md"]).read()
  for key in ("plot", "examples_sign", "examples_rotation"):
    assert open(paths[key], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  back = data.load_npz(paths["poisoned_sign_k2"])
  np.testing.assert_array_equal(back.x, experiment.poisoned["sign"][2].x)
  np.testing.assert_array_equal(back.index, experiment.train.index)
  assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_split_and_config_errors(mini, extractor):
  _, test = mini
  with pytest.raises(InvjaxError, match="one half empty"):
    pipeline.split_mask(test, boundary=0)
  with pytest.raises(InvjaxError, match="methods"):
    pipeline.run_experiment(dict(methods="sign,magic"), extractor=extractor, train=mini[0],
                            test=test, progress=False)
  with pytest.raises(InvjaxError, match="svm_backend"):
    pipeline.make_fit_fn(dict(svm_backend="sklearn"))
  sub = pipeline.subset(test, 20, boundary=5000)
  assert (sub.index < 5000).sum() == 10 and (sub.index >= 5000).sum() == 10


def test_efficientnet_sign_step_on_a_handful_of_images(mini):
  """The real network: one step moves pixels by one grey level and lowers the OvR loss of
  every image under a fixed SVM, measured by an independent uint8 forward pass."""
  from invjax.nets import efficientnet
  ex = pipeline.efficientnet_extractor(32)
  x, y = mini[0].x[:4], mini[0].y[:4]
  rng = np.random.default_rng(0)
  w = {"w": rng.standard_normal((10, 1280)).astype(np.float32) * 0.05}
  loss = lambda z: np.asarray(poison.ovr_hinge_loss(
      efficientnet.features(ex.params, z, resolution=32) @ w["w"].T, y))
  x1 = poison.sign_step(ex.apply, ex.params, x, y, w, batch_size=4)
  assert poison.linf(x1, x) == 1 and np.mean(x1 != x) > 0.5
  assert np.all(loss(x1) < loss(x)), (loss(x), loss(x1))
