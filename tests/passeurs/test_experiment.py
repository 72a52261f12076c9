"""The experiment loop (features -> SVM -> public/private accuracy, poisoning steps) and its
written report, with a stand-in extractor."""
import json
import os

import jax
import numpy as np
import pytest

from invjax import data
from invjax._src.checks import InvjaxError
from invjax.passeurs import experiment
from invjax.passeurs import features
from invjax.passeurs import poison
from invjax.passeurs import report
from invjax.passeurs import svm


@pytest.fixture(scope="module")
def extractor():
  return features.random_conv_extractor(jax.random.PRNGKey(0), channels=8)


@pytest.fixture(scope="module")
def mini():
  train = data.load("cifar10_mini", "train")
  test = data.load("cifar10_mini", "test")
  keep = np.concatenate([np.where(train.y == c)[0][:40] for c in range(10)])
  return train.take(np.sort(keep)), test


@pytest.fixture(scope="module")
def result(extractor, mini):
  train, test = mini
  return experiment.run_experiment(extractor=extractor, train=train, test=test,
                                   fit_fn=svm.make_fit("liblinear"), steps=2,
                                   methods="sign,rotation", batch_size=128, progress=False,
                                   log=lambda s: None)


def test_public_private_split_by_official_index():
  test = data.load("cifar10_mini", "test")
  public = experiment.split_mask(test)
  pub, priv = test.take(np.where(public)[0]), test.take(np.where(~public)[0])
  assert len(pub) == len(priv) == 250
  assert pub.index.max() < 5000 <= priv.index.min()


def test_liblinear_backend_matches_reference_predictions(mini, extractor):
  from liblinear import liblinearutil
  import scipy.sparse
  f = features.embed(extractor, mini[0].x[:200])
  y = mini[0].y[:200]
  params = svm.fit_liblinear(f, y)
  assert isinstance(params, svm.SVMParams)
  model = liblinearutil.train(y.astype(float), scipy.sparse.csr_matrix(f.astype(np.float64)),
                              "-s 1 -c 1 -B -1 -q")
  ref, _, _ = liblinearutil.predict(y.astype(float), scipy.sparse.csr_matrix(f.astype(np.float64)),
                                    model, "-q")
  # LIBLINEAR's dual CD visits samples in a random order: allow a near-tie to flip.
  agree = np.mean(np.argmax(experiment.scores(params, f), 1) == np.asarray(ref, int))
  assert agree >= 0.98
  assert experiment.accuracy(params, f, y) == pytest.approx(np.mean(np.asarray(ref) == y),
                                                            abs=0.02)
  w_ref = np.stack([model.get_decfun(model.get_labels().index(c))[0] for c in range(10)])
  np.testing.assert_allclose(params["w"], w_ref, rtol=0.05, atol=0.05 * np.abs(w_ref).max())


def test_experiment_raises_public_not_private(result, mini):
  rows = result.rows
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
  p = result.poisoned["sign"][2]
  np.testing.assert_array_equal(p.y, mini[0].y)
  np.testing.assert_array_equal(p.index, mini[0].index)
  assert result.public.sum() == 250


def test_write_artifacts(result, tmp_path):
  paths = report.write_artifacts(result, str(tmp_path))
  rows = json.load(open(paths["results_json"]))["rows"]
  assert len(rows) == 5 and rows[0]["method"] == "clean"
  assert "| sign | 2 |" in open(paths["results_md"]).read()
  for key in ("plot", "examples_sign", "examples_rotation"):
    assert open(paths[key], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  back = data.load_npz(paths["poisoned_sign_k2"])
  np.testing.assert_array_equal(back.x, result.poisoned["sign"][2].x)
  np.testing.assert_array_equal(back.index, result.train.index)
  assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_split_and_config_errors(mini, extractor):
  _, test = mini
  with pytest.raises(InvjaxError, match="one half empty"):
    experiment.split_mask(test, boundary=0)
  with pytest.raises(InvjaxError, match="methods"):
    experiment.run_experiment(methods="sign,magic", extractor=extractor, train=mini[0],
                              test=test, progress=False)
  with pytest.raises(InvjaxError, match="svm_backend"):
    svm.make_fit("sklearn")
  sub = experiment.subset(test, 20, boundary=5000)
  assert (sub.index < 5000).sum() == 10 and (sub.index >= 5000).sum() == 10


def test_settings_errors_and_record(mini, extractor):
  train, test = mini
  kwargs = dict(extractor=extractor, train=train, test=test, progress=False, log=lambda s: None)
  with pytest.raises(InvjaxError, match="steps must be >= 1"):
    experiment.run_experiment(steps=0, **kwargs)
  with pytest.raises(InvjaxError, match="margin must be one of"):
    experiment.run_experiment(margin="hinge3", **kwargs)
  with pytest.raises(InvjaxError, match="sign_momentum must be >= 0"):
    experiment.run_experiment(sign_momentum=-1.0, **kwargs)
  # One step on 20 training images: the call's own settings are recorded with the result.
  small = experiment.run_experiment(steps=1, **dict(kwargs, train=experiment.subset(train, 20)))
  assert small.config["steps"] == 1 and small.config["methods"] == "sign"
  assert small.config["public_boundary"] == experiment.PUBLIC_BOUNDARY == 5000


def test_linf_violation_raises(mini, extractor, monkeypatch):
  """A poisoning step that moves a pixel by more than one grey level is an InvjaxError, in the
  experiment loop and in `poison.sign_poison` (not an AssertionError)."""
  train, test = mini
  train = experiment.subset(train, 20)
  two_levels = lambda fn, params, x, *args, **kwargs: np.minimum(x.astype(np.int16) + 2,
                                                                 255).astype(np.uint8)
  monkeypatch.setattr(poison, "sign_step", two_levels)
  with pytest.raises(InvjaxError, match=r"sign step 1: L_inf 2 > 1"):
    experiment.run_experiment(extractor=extractor, train=train, test=test, steps=1,
                              progress=False, log=lambda s: None)
  with pytest.raises(InvjaxError, match=r"sign step 1: L_inf 2 > 1"):
    poison.sign_poison(extractor.apply, extractor.params, train.x, train.y,
                       {"w": np.zeros((10, 128), np.float32)})
