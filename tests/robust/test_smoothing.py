"""Randomized smoothing against closed forms: a linear classifier's exact radius (the distance
to its hyperplane), scipy's exact binomial intervals and a bisection on the binomial tail, the
binomial law of the votes, and fair coins that must abstain."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from invjax._src.checks import InvjaxError
from invjax.robust import smoothing

D = 5
SIGMA = 0.5


def _linear(seed=0, b=0.3):
  """logits [w.x + b, 0]: class 0 iff w.x + b > 0; the unit normal u and a point x0 on the plane."""
  rng = np.random.default_rng(seed)
  w = rng.standard_normal(D).astype(np.float32)
  fn = lambda v: jnp.stack([v @ w + b, jnp.zeros(v.shape[0], v.dtype)], -1)
  return fn, w, np.float32(b), w / np.linalg.norm(w), (-b * w / np.dot(w, w)).astype(np.float32)


def _points(u, x0, distances, seed=1):
  """Points at signed distances from the plane, moved along it by a random tangent."""
  rng = np.random.default_rng(seed)
  t = rng.standard_normal((len(distances), D))
  t -= (t @ u)[:, None] * u[None]
  return (x0[None] + np.asarray(distances)[:, None] * u[None] + t).astype(np.float32)


def _cp_lower_bisection(k, n, alpha):
  """The p with P_p(X >= k) = alpha, by bisection on scipy's binomial tail (0 for k = 0)."""
  if k == 0:
    return 0.0
  lo, hi = 0.0, 1.0
  for _ in range(100):
    mid = 0.5 * (lo + hi)
    lo, hi = (lo, mid) if stats.binom.sf(k - 1, n, mid) > alpha else (mid, hi)
  return 0.5 * (lo + hi)


def test_linear_classifier_radius_is_sound_and_within_ten_percent_of_the_distance():
  """The smoothed linear classifier is the base one and its exact radius the distance
  |w.x + b| / ||w|| (p_A = Phi(distance / sigma)). Which points can be within 10% with
  N = 1e5, alpha = 1e-3: even a vote count 5 standard deviations below its mean N p_A must
  give sigma Phi^-1(Clopper-Pearson bound) >= 0.9 distance; at 0.05 sigma (too near the plane)
  and 6 sigma (too far: N votes certify at most sigma Phi^-1(alpha^(1/N)) = 3.8 sigma) it
  cannot, and there only soundness is checked."""
  n, alpha = 100_000, 1e-3
  near = np.array([0.5, 1.0, 2.0, 3.0, -1.0, -2.5]) * SIGMA
  far = np.array([0.05, 6.0, -6.0]) * SIGMA

  def pessimistic_radius(dist):
    p = stats.norm.cdf(abs(dist) / SIGMA)
    k = int(np.floor(n * p - 5 * np.sqrt(n * p * (1 - p))))
    return SIGMA * stats.norm.ppf(stats.beta.ppf(alpha, k, n - k + 1))

  assert all(pessimistic_radius(d) >= 0.9 * abs(d) for d in near)
  assert all(SIGMA * stats.norm.ppf(alpha ** (1 / n)) < 0.9 * abs(d) for d in far[1:])
  assert pessimistic_radius(far[0]) < 0.9 * abs(far[0])

  fn, w, b, u, x0 = _linear()
  x = _points(u, x0, np.concatenate([near, far]))
  exact = np.abs(x.astype(np.float64) @ w + b) / np.linalg.norm(w)
  cert = smoothing.certify(fn, x, key=jax.random.key(0), sigma=SIGMA, num_selection=100,
                           num_samples=n, alpha=alpha, batch_size=20_000)
  base = np.where(x @ w + b > 0, 0, 1)
  np.testing.assert_array_equal(cert.counts.sum(1), n)
  np.testing.assert_array_equal(cert.prediction[:len(near)], base[:len(near)])
  assert np.all(cert.radius <= exact), (cert.radius, exact)
  assert np.all(cert.radius[:len(near)] >= 0.9 * exact[:len(near)]), (cert.radius, exact)
  # the reported bound and radius follow from the reported counts (scipy's exact interval)
  for i, c in enumerate(cert.prediction):
    if c >= 0:
      k = int(cert.counts[i, c])
      low = stats.binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha,
                                                method="exact").low
      np.testing.assert_allclose(cert.p_lower[i], low, rtol=1e-9)
      np.testing.assert_allclose(cert.radius[i], SIGMA * stats.norm.ppf(low), rtol=1e-9)


@pytest.mark.parametrize("k,n,alpha", [(0, 10, 0.05), (1, 10, 0.05), (7, 10, 0.05),
                                       (10, 10, 0.05), (55, 100, 0.001), (99_990, 100_000, 0.001),
                                       (100_000, 100_000, 0.001), (3, 1000, 0.3)])
def test_clopper_pearson_bound_matches_exact_intervals_and_bisection(k, n, alpha):
  got = float(smoothing.lower_confidence_bound(np.array(k), n, alpha))
  assert got == pytest.approx(_cp_lower_bisection(k, n, alpha), rel=1e-9, abs=1e-12)
  if k > 0:  # scipy's two-sided exact interval at 1 - 2 alpha has the one-sided bound as its low end
    low = stats.binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
    assert got == pytest.approx(low, rel=1e-9)
  if k == n:
    assert got == pytest.approx(alpha ** (1 / n), rel=1e-9)
  vec = smoothing.lower_confidence_bound(np.array([k, k]), n, alpha)
  np.testing.assert_allclose(vec, [got, got])


def test_votes_follow_the_binomial_law_and_the_bound_covers_p():
  """400 copies of one point at distance 0.3 sigma: p_A = Phi(0.3). Each example's votes are
  Binomial(N, p) and independent of the others (mean and variance of the counts), and the
  lower bound lies below the probability of the selected class in >= 1 - alpha of the draws."""
  fn, w, b, u, x0 = _linear(seed=2)
  reps, n, alpha = 400, 100, 0.05
  x = np.repeat(_points(u, x0, [0.3 * SIGMA]), reps, axis=0)
  p = stats.norm.cdf(0.3)
  cert = smoothing.certify(fn, x, key=jax.random.key(3), sigma=SIGMA, num_selection=10,
                           num_samples=n, alpha=alpha, batch_size=4096)
  votes = cert.counts[:, 0]
  se_mean = np.sqrt(n * p * (1 - p) / reps)
  assert abs(votes.mean() - n * p) < 4 * se_mean, (votes.mean(), n * p)
  assert 0.65 < votes.var(ddof=1) / (n * p * (1 - p)) < 1.35  # sd of the ratio ~ 0.07
  selected = np.argmax(cert.selection_counts, 1)
  p_selected = np.where(selected == 0, p, 1 - p)
  covered = np.mean(cert.p_lower <= p_selected)
  assert covered >= 1 - alpha - 3 * np.sqrt(alpha * (1 - alpha) / reps), covered
  assert np.mean(p_selected - cert.p_lower) < 0.15  # and not trivially 0


def test_fair_coins_abstain():
  fn, w, b, u, x0 = _linear(seed=4)
  on_plane = _points(u, x0, np.zeros(12), seed=5)  # P(class 0) = 1/2 by symmetry
  coin = lambda v: jnp.stack([jnp.sin(1e3 * v[:, 0]), -jnp.sin(1e3 * v[:, 0])], -1)
  far = _points(u, x0, np.full(12, 5.0), seed=6)  # the coin ignores how far from the plane
  for logits_fn, x in ((fn, on_plane), (coin, on_plane), (coin, far)):
    pred = smoothing.predict(logits_fn, x, key=jax.random.key(7), sigma=SIGMA, num_samples=2000,
                             alpha=1e-3, batch_size=4096)
    np.testing.assert_array_equal(pred, smoothing.ABSTAIN)
    cert = smoothing.certify(logits_fn, x, key=jax.random.key(8), sigma=SIGMA,
                             num_samples=2000, alpha=1e-3, batch_size=4096)
    np.testing.assert_array_equal(cert.prediction, smoothing.ABSTAIN)
    np.testing.assert_array_equal(cert.radius, 0.0)
    assert np.all(cert.p_lower < 0.5)


def test_predict_agrees_with_the_base_classifier_far_from_the_boundary():
  fn, w, b, u, x0 = _linear(seed=9)
  x = _points(u, x0, np.array([3.0, -3.0, 4.0, -5.0, 3.5, -3.2]) * SIGMA, seed=10)
  pred = smoothing.predict(fn, x, key=jax.random.key(11), sigma=SIGMA, num_samples=1000,
                           alpha=1e-3, batch_size=4096)
  np.testing.assert_array_equal(pred, np.argmax(np.asarray(fn(jnp.asarray(x))), -1))


def test_images_groups_and_chunks_count_every_sample_once():
  """NHWC inputs; more examples than batch_size (groups, the last padded) and N not a
  multiple of the chunk: every example gets exactly N votes, and the noise is sigma-Gaussian
  (a pixel-sum classifier votes class 0 with probability Phi(sum(x) / (sigma sqrt(d))))."""
  rng = np.random.default_rng(12)
  x = (0.1 * rng.standard_normal((7, 2, 2, 3))).astype(np.float32)
  fn = lambda v: jnp.stack([v.reshape(v.shape[0], -1).sum(1), jnp.zeros(v.shape[0])], -1)
  for batch_size, n in ((3, 50), (64, 50), (4096, 20_000)):
    cert = smoothing.certify(fn, x, key=jax.random.key(13), sigma=SIGMA, num_selection=7,
                             num_samples=n, batch_size=batch_size)
    np.testing.assert_array_equal(cert.counts.sum(1), n)
    np.testing.assert_array_equal(cert.selection_counts.sum(1), 7)
  p = stats.norm.cdf(x.reshape(7, -1).sum(1) / (SIGMA * np.sqrt(12)))
  assert np.all(np.abs(cert.counts[:, 0] - n * p) < 5 * np.sqrt(n * p * (1 - p)))


def test_selection_estimation_and_groups_draw_fresh_noise():
  """The N estimation samples are not the N0 selection samples (that would bias p_A), and
  copies of one point in different groups of examples get different noise."""
  fn, w, b, u, x0 = _linear(seed=20)
  x = np.repeat(_points(u, x0, [0.0], seed=21), 6, axis=0)  # P(class 0) = 1/2
  cert = smoothing.certify(fn, x, key=jax.random.key(22), sigma=SIGMA, num_selection=500,
                           num_samples=500, batch_size=2)  # 3 groups of 2 examples
  assert not np.array_equal(cert.counts, cert.selection_counts)
  assert len(np.unique(cert.counts[:, 0])) > 3


def test_the_counting_loop_is_one_compiled_loop():
  """The model is traced a few times (shape probe, selection, estimation), not once per chunk."""
  traces = []
  fn0, *_ = _linear(seed=14)

  def fn(v):
    traces.append(v.shape)
    return fn0(v)

  x = np.zeros((2, D), np.float32)
  cert = smoothing.certify(fn, x, key=jax.random.key(15), sigma=SIGMA, num_selection=10,
                           num_samples=10_000, batch_size=200)  # 100 chunks of 100 per example
  np.testing.assert_array_equal(cert.counts.sum(1), 10_000)
  assert len(traces) <= 4, traces
  assert (200,) + x.shape[1:] in traces  # one call holds batch_size noisy inputs


def test_certified_accuracy_counts_correct_certified_examples():
  rng = np.random.default_rng(16)
  pred = rng.integers(-1, 3, 50)
  radius = np.where(pred >= 0, rng.uniform(0, 2, 50), 0.0)
  cert = smoothing.Certificate(pred, radius, np.zeros(50), np.zeros((50, 3), int),
                               np.zeros((50, 3), int))
  y = rng.integers(0, 3, 50)
  radii = [0.0, 0.5, 1.0, 1.99, 3.0]
  want = [sum(1 for i in range(50) if pred[i] == y[i] and radius[i] >= r) / 50 for r in radii]
  np.testing.assert_allclose(smoothing.certified_accuracy(cert, y, radii), want)
  assert float(smoothing.certified_accuracy(cert, y, 0.5)) == pytest.approx(want[1])
  # an abstention never counts, not even at radius 0
  abstain = cert._replace(prediction=np.full(50, -1))
  np.testing.assert_array_equal(smoothing.certified_accuracy(abstain, y, [0.0]), [0.0])
  with pytest.raises(InvjaxError, match="radii"):
    smoothing.certified_accuracy(cert, y, [-0.1])
  with pytest.raises(InvjaxError, match="y"):
    smoothing.certified_accuracy(cert, y[:10], [0.1])


def test_gaussian_augment_adds_sigma_gaussian_noise():
  x = jnp.full((1000, 10, 10), 0.5, jnp.float32)
  out = smoothing.gaussian_augment(jax.random.key(17), x, 0.25)
  assert out.shape == x.shape and out.dtype == x.dtype
  noise = np.asarray(out - x).ravel()
  assert abs(noise.mean()) < 4 * 0.25 / np.sqrt(noise.size)
  assert noise.std() == pytest.approx(0.25, rel=0.01)
  assert stats.kstest(noise / 0.25, "norm").pvalue > 1e-3
  jitted = jax.jit(smoothing.gaussian_augment)(jax.random.key(17), x, 0.25)
  np.testing.assert_allclose(jitted, out, rtol=1e-6, atol=1e-6)  # fused multiply-add
  other = smoothing.gaussian_augment(jax.random.key(18), x, 0.25)
  assert not np.allclose(other, out)
  np.testing.assert_array_equal(smoothing.gaussian_augment(jax.random.key(17), x, 0.0), x)
  with pytest.raises(InvjaxError, match="sigma"):
    smoothing.gaussian_augment(jax.random.key(0), x, -0.1)
  with pytest.raises(InvjaxError, match="floating"):
    smoothing.gaussian_augment(jax.random.key(0), jnp.ones((2, 3), jnp.int32), 0.1)


@pytest.mark.parametrize("change,match", [
    (dict(sigma=0.0), "sigma"), (dict(sigma=-1.0), "sigma"), (dict(alpha=0.0), "alpha"),
    (dict(alpha=1.0), "alpha"), (dict(num_selection=0), "num_selection"),
    (dict(num_samples=0), "num_samples"), (dict(num_samples=2.5), "num_samples"),
    (dict(batch_size=0), "batch_size"), (dict(x=np.full((2, D), np.nan, np.float32)), "NaN"),
    (dict(x=np.zeros(D, np.float32)), "rank"), (dict(x=np.zeros((2, D), np.int32)), "floating"),
    (dict(logits_fn=lambda v: v @ np.ones(D, np.float32)), "logits_fn"),
    (dict(logits_fn=lambda v: v[:, :1]), "2 classes"),
    (dict(logits_fn=lambda v: jnp.stack([jnp.log(v[:, 0] - 10.0), v[:, 1]], -1)), "NaN"),
    (dict(key=None), "key"),
])
def test_bad_inputs_raise_naming_the_problem(change, match):
  fn, *_ = _linear(seed=19)
  args = dict(logits_fn=fn, x=np.zeros((2, D), np.float32), key=jax.random.key(0), sigma=0.5,
              num_selection=10, num_samples=20, alpha=0.01, batch_size=16)
  args.update(change)
  with pytest.raises(InvjaxError, match=match):
    smoothing.certify(**args)
  if "num_selection" not in change:
    args.pop("num_selection")
    with pytest.raises(InvjaxError, match=match):
      smoothing.predict(**args)
