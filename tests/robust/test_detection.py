"""Likelihood detection: bits/dim vs a closed-form density, AUC vs sklearn / scipy, adaptive attack."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from invjax import flows
from invjax._src.checks import InvjaxError
from invjax.robust import detection

C, S = 0.5, 0.05  # the toy density: x ~ N(C, S^2 I)
SHAPE = (4, 4, 1)


class _Standardise(nn.Module):
  """z = (x - C) / S, flattened: the flow of the density N(C, S^2 I)."""

  def __call__(self, x):
    z = ((x - C) / S).reshape(x.shape[0], -1)
    return z, jnp.full((x.shape[0],), -z.shape[1] * np.log(S))

  def inverse(self, z):
    x = (z * S + C).reshape((z.shape[0],) + SHAPE)
    return x, jnp.full((z.shape[0],), z.shape[1] * np.log(S))


def _toy(n=32, seed=0):
  """A hybrid classifier whose first two latent dims are the logits, and data from its density
  with the class written into those two dims (z_y = 1.5, z_other = -1.5)."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, n)
  e = rng.standard_normal((n,) + SHAPE).reshape(n, -1)
  e[:, 0] = np.where(y == 0, 1.5, -1.5)
  e[:, 1] = -e[:, 0]
  x = (C + S * e).reshape((n,) + SHAPE).astype(np.float32)
  clf = flows.InvertibleClassifier(flow=_Standardise(), num_classes=2, head="identity_slice",
                                   latent_shape=(int(np.prod(SHAPE)),))
  return clf, clf.init(jax.random.key(0), x), jnp.asarray(x), jnp.asarray(y, jnp.int32)


def test_bits_per_dim_is_the_closed_form_density():
  clf, variables, x, _ = _toy(8)
  d = int(np.prod(SHAPE))
  log_px = stats.norm.logpdf(np.asarray(x, np.float64), C, S).reshape(8, -1).sum(1)
  want = -log_px / (d * np.log(2)) + 8  # the [0, 1] -> 256 bins offset
  np.testing.assert_allclose(detection.bits_per_dim(clf, variables, x), want, rtol=1e-5)
  # a flow (z, log_det) gives the same numbers
  flow = _Standardise()
  np.testing.assert_allclose(detection.bits_per_dim(flow, {}, x), want, rtol=1e-5)


def _reference_auc(neg, pos):
  try:
    from sklearn.metrics import roc_auc_score  # pylint: disable=g-import-not-at-top
  except ImportError:
    return stats.mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg))
  return roc_auc_score(np.r_[np.zeros(len(neg)), np.ones(len(pos))], np.r_[neg, pos])


@pytest.mark.parametrize("seed", range(3))
def test_auc_matches_the_reference_on_random_scores(seed):
  rng = np.random.default_rng(seed)
  neg = np.round(rng.standard_normal(40 + seed), 1)  # rounding makes ties
  pos = np.round(rng.standard_normal(25) + 0.5 * seed, 1)
  assert detection.roc_auc(neg, pos) == pytest.approx(_reference_auc(neg, pos), abs=1e-12)
  assert detection.roc_auc(neg, pos) == pytest.approx(1 - detection.roc_auc(pos, neg))
  assert detection.roc_auc([0.0, 1.0], [2.0, np.nan]) == 1.0  # NaN counts as +inf
  with pytest.raises(InvjaxError, match="both sets"):
    detection.roc_auc([], pos)


def test_adaptive_attack_evades_the_detector_that_catches_pgd():
  clf, variables, x, y_true = _toy(32)
  # 4 wrong labels: the classifier (correct on every image by construction) "errs" on those;
  # they are clean errors, not attack successes, and are left out of the attacked set
  wrong = np.arange(32) < 4
  y = jnp.where(jnp.asarray(wrong), 1 - y_true, y_true)
  report = detection.detection_report(clf, variables, x, y, key=jax.random.key(0), epsilon=0.2,
                                      num_steps=10, adaptive_lambdas=(10.0,),
                                      latent_method="closed_form")
  assert [r.name for r in report.rows] == ["clean", "pgd", "latent (closed_form)",
                                           "adaptive (lambda 10)"]
  clean, pgd, lat, adaptive = report.rows
  np.testing.assert_array_equal(clean.success, wrong)
  np.testing.assert_array_equal(report.attacked, ~wrong)
  assert report.only_correct and [s["n"] for s in report.summary()] == [32, 28, 28, 28]
  np.testing.assert_allclose(clean.bits_per_dim, detection.bits_per_dim(clf, variables, x))
  # PGD's large (random start + sign steps) perturbations leave the density: detected
  assert np.all(pgd.success)
  assert np.median(pgd.bits_per_dim) > np.max(clean.bits_per_dim)
  assert pgd.auc > 0.95 and not np.any(pgd.evasion)
  # the adaptive attack fools the classifier at the same epsilon and stays in range
  assert np.mean(adaptive.success) >= 0.9
  assert adaptive.auc < pgd.auc - 0.5
  assert np.mean(adaptive.evasion) >= 0.5
  assert 0.0 <= lat.auc <= 1.0 and lat.bits_per_dim.shape == (28,)
  for r in report.rows[1:]:
    assert float(jnp.max(jnp.abs(jnp.asarray(r.bits_per_dim)))) < np.inf
  md = report.markdown()
  assert md.count("\n| ") == 4 and "adaptive (lambda 10)" in md and "| pgd | 28 |" in md
  # attacking every image instead counts the 4 clean errors as PGD successes
  everything = detection.detection_report(clf, variables, x, y, key=jax.random.key(0),
                                          epsilon=0.2, num_steps=10, attacks=("pgd",),
                                          only_correct=False)
  assert not everything.only_correct and np.all(everything.attacked)
  assert everything.rows[1].success.shape == (32,) and np.all(everything.rows[1].success[:4])
  assert "clean errors count as successes" in everything.markdown()
  with pytest.raises(InvjaxError, match="unknown attacks"):
    detection.detection_report(clf, variables, x, y, key=jax.random.key(0), attacks=("fgsm",))
  with pytest.raises(InvjaxError, match="none of the 32"):
    detection.detection_report(clf, variables, x, 1 - y_true, key=jax.random.key(0), attacks=())
