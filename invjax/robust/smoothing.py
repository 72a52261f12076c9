"""Randomized smoothing: a probabilistic l2 certificate for any classifier (Cohen et al. 2019).

Cohen, Rosenfeld & Kolter, "Certified adversarial robustness via randomized smoothing",
ICML 2019. For a base classifier f (here the argmax of `logits_fn`) and a noise level sigma,
the smoothed classifier is

  g(x) = argmax_c P(f(x + eps) = c),   eps ~ N(0, sigma^2 I).

* Theorem 1 (the radius): if P(f(x + eps) = c_A) >= p_A > 1/2, then g(x + delta) = c_A for
  every ||delta||_2 < sigma * Phi^-1(p_A) (the paper's radius sigma/2 (Phi^-1(p_A) -
  Phi^-1(p_B)) with the bound p_B = 1 - p_A on the runner-up). The bound is tight for a
  linear f, whose smoothed classifier is f itself: P(w.(x + eps) + b > 0) =
  Phi((w.x + b) / (sigma ||w||)), so sigma Phi^-1(p_A) is the distance to the hyperplane.
* `certify` is the paper's CERTIFY: the top class c_A from `num_selection` (N0) noisy
  samples, then its count n_A among `num_samples` (N) fresh samples, the one-sided
  Clopper-Pearson lower bound p_A at level alpha (`lower_confidence_bound`), ABSTAIN when
  p_A <= 1/2, else the radius sigma Phi^-1(p_A). Proposition 2: with probability >= 1 - alpha
  over the noise, a returned class is g(x) and g is constant within the returned radius. The
  selection samples are not reused for the estimate, so the bound on n_A is a plain binomial
  bound (c_A is fixed before the N samples are drawn).
* `predict` is the paper's PREDICT: the top two counts n_A, n_B among N samples and a
  two-sided binomial test of n_A ~ Binomial(n_A + n_B, 1/2); the class is returned when the
  p-value is <= alpha, else ABSTAIN. Proposition 1: it returns a class other than g(x) with
  probability at most alpha.
* `gaussian_augment` is the training-time noise of the base classifier (Cohen et al. train f
  on x + eps with the sigma used at certification, so that f is accurate under the noise).

The noise counting runs in one compiled `lax.fori_loop` over chunks of noisy copies (each
chunk's noise from `fold_in(key, chunk)`), batched over the examples; the statistics
(scipy.stats) run on the host from the integer counts. ABSTAIN is encoded as -1.
"""
from __future__ import annotations

import functools
import operator
from typing import Callable, NamedTuple, Sequence, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from invjax._src import checks
from invjax._src import compilation

Array = jax.Array
LogitsFn = Callable[[Array], Array]

ABSTAIN = -1


class Certificate(NamedTuple):
  """The result of `certify`, numpy arrays over the batch.

  prediction: int [batch], the certified class c_A, or ABSTAIN (-1).
  radius: float [batch], sigma * Phi^-1(p_lower) (0 when abstaining): with probability
    >= 1 - alpha, the smoothed classifier predicts `prediction` in the open l2 ball of this
    radius around x.
  p_lower: float [batch], the one-sided Clopper-Pearson lower bound on P(f(x + eps) = c_A).
  counts: int [batch, classes], the votes of the N estimation samples.
  selection_counts: int [batch, classes], the votes of the N0 selection samples.
  """
  prediction: np.ndarray
  radius: np.ndarray
  p_lower: np.ndarray
  counts: np.ndarray
  selection_counts: np.ndarray


class _Tally(NamedTuple):
  counts: Array      # int32 [batch, classes] votes of the noisy copies
  non_finite: Array  # int32 [batch] noisy copies whose logits hold a NaN or an infinity


# ----------------------------------------------------------------------------- noise


def gaussian_augment(key: Array, x: Array, sigma) -> Array:
  """`x + sigma * eps`, eps ~ N(0, I) of x's shape and dtype: the noise Cohen et al. train with.

  Jit-able (sigma may be traced; then only the static checks apply). The result is not
  clipped to the pixel range, as in the paper: the base classifier must see the same noise
  at training and at certification.

  Args:
    key: PRNG key.
    x: float [batch, ...] inputs.
    sigma: the noise standard deviation, >= 0 (0 returns x).
  """
  checks.check_floating(x, "x")
  checks.check_positive(sigma, "sigma", strict=False)
  x = jnp.asarray(x)
  return x + jnp.asarray(sigma, x.dtype) * jax.random.normal(key, x.shape, x.dtype)


@functools.partial(compilation.jit,
                   static_argnames=("logits_fn", "num_samples", "per_call", "num_classes"))
def _tally(logits_fn, x, key, sigma, num_samples, per_call, num_classes):
  """Votes of `num_samples` noisy copies of each example, `per_call` copies per chunk.

  Chunk i draws noise [per_call, batch, ...] from fold_in(key, i) and calls `logits_fn` once
  on per_call * batch inputs; the copies past `num_samples` in the last chunk are masked.
  """
  batch = x.shape[0]
  num_chunks = -(-num_samples // per_call)

  def body(i, tally):
    noise = jax.random.normal(jax.random.fold_in(key, i), (per_call,) + x.shape, x.dtype)
    noisy = (x[None] + sigma * noise).reshape((per_call * batch,) + x.shape[1:])
    logits = logits_fn(noisy).reshape(per_call, batch, num_classes)
    valid = (i * per_call + jnp.arange(per_call)) < num_samples
    votes = jax.nn.one_hot(jnp.argmax(logits, -1), num_classes, dtype=jnp.int32)
    votes = jnp.sum(votes * valid[:, None, None].astype(jnp.int32), axis=0)
    bad = valid[:, None] & ~jnp.all(jnp.isfinite(logits), -1)
    return _Tally(tally.counts + votes, tally.non_finite + jnp.sum(bad.astype(jnp.int32), 0))

  init = _Tally(jnp.zeros((batch, num_classes), jnp.int32), jnp.zeros((batch,), jnp.int32))
  return jax.lax.fori_loop(0, num_chunks, body, init)


def _counts(logits_fn, x, key, sigma, num_samples, batch_size, num_classes) -> np.ndarray:
  """int [batch, classes] votes of `num_samples` noisy copies per example.

  Each `logits_fn` call holds at most `batch_size` noisy inputs (and at least one per
  example of a group): the examples run in groups of min(batch, batch_size), group g with
  key fold_in(key, g), the last group padded so that all share one compilation.
  """
  batch = x.shape[0]
  group = min(batch, batch_size)
  per_call = max(1, min(batch_size // group, num_samples))
  out, non_finite = [], 0
  for g, start in enumerate(range(0, batch, group)):
    xs = x[start:start + group]
    real = xs.shape[0]
    if real < group:
      xs = jnp.concatenate([xs, jnp.broadcast_to(xs[:1], (group - real,) + xs.shape[1:])])
    tally = _tally(logits_fn, xs, jax.random.fold_in(key, g), jnp.asarray(sigma, x.dtype),
                   num_samples, per_call, num_classes)
    chex.assert_shape(tally.counts, (group, num_classes))
    out.append(np.asarray(tally.counts)[:real])
    non_finite += int(np.sum(np.asarray(tally.non_finite)[:real]))
  if non_finite:
    raise checks.InvjaxError(
        f"logits_fn returned NaN or infinite logits on {non_finite} noisy input(s) "
        f"(sigma={sigma}); the vote of such a sample is meaningless")
  counts = np.concatenate(out)
  chex.assert_shape(counts, (batch, num_classes))
  return counts


# ----------------------------------------------------------------------------- statistics


def lower_confidence_bound(successes, trials: int, alpha: float) -> np.ndarray:
  """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion.

  For k successes in n trials the bound is the p at which P_p(X >= k) = alpha (0 for k = 0).
  P_p(X >= k) = I_p(k, n - k + 1), the Beta(k, n - k + 1) CDF at p, so the bound is
  `beta.ppf(alpha, k, n - k + 1)`. As P_p(X >= k) grows with p, the bound exceeds the true p
  only when k is in the upper alpha-tail of Binomial(n, p): P(bound <= p) >= 1 - alpha.
  (Cohen et al.'s `proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]`.)

  Args:
    successes: int array of counts k in [0, trials].
    trials: n >= 1.
    alpha: in (0, 1).

  Returns:
    float64 array of successes' shape.
  """
  trials = _count_arg(trials, "trials")
  checks.check_in_open_interval(alpha, 0.0, 1.0, "alpha")
  k = np.asarray(successes)
  if not np.issubdtype(k.dtype, np.integer) or (k.size and (k.min() < 0 or k.max() > trials)):
    raise checks.InvjaxError(f"successes must be integer counts in [0, {trials}], got {k}")
  k = k.astype(np.float64)
  with np.errstate(invalid="ignore"):
    bound = stats.beta.ppf(alpha, k, trials - k + 1)
  return np.where(k > 0, bound, 0.0)


def _top_two_test(counts: np.ndarray, alpha: float) -> np.ndarray:
  """PREDICT's decision per row of counts: the top class if the binomial test passes, else -1."""
  order = np.argsort(-counts, axis=1, kind="stable")
  out = np.full(counts.shape[0], ABSTAIN, np.int64)
  for i, (a, b) in enumerate(order[:, :2]):
    n_a, n_b = int(counts[i, a]), int(counts[i, b])
    if stats.binomtest(n_a, n_a + n_b, 0.5).pvalue <= alpha:
      out[i] = a
  return out


# ----------------------------------------------------------------------------- checks


def _count_arg(value, name: str) -> int:
  try:
    n = operator.index(value)
  except TypeError:
    raise checks.InvjaxError(f"{name} must be an integer, got {value!r}") from None
  if n < 1:
    raise checks.InvjaxError(f"{name} must be >= 1, got {n}")
  return n


def _validate(logits_fn, x, key, sigma, alpha, batch_size) -> Tuple[Array, int]:
  """Checks the common arguments; returns x as a jax array and the number of classes."""
  if not callable(logits_fn):
    raise checks.InvjaxError(f"logits_fn must be callable, got {type(logits_fn).__name__}")
  if key is None:
    raise checks.InvjaxError("key must be a PRNG key (jax.random.key), got None")
  if np.ndim(x) < 2:
    raise checks.InvjaxError(
        f"x must be batch-first with rank >= 2 ([batch, d] or NHWC), got shape {np.shape(x)}")
  if np.shape(x)[0] == 0:
    raise checks.InvjaxError("x must hold at least one example")
  checks.check_floating(x, "x")
  checks.check_finite(x, "x")
  checks.check_positive(sigma, "sigma")
  checks.check_in_open_interval(alpha, 0.0, 1.0, "alpha")
  _count_arg(batch_size, "batch_size")
  x = jnp.asarray(x)
  probe = jax.ShapeDtypeStruct((2,) + x.shape[1:], x.dtype)
  out = jax.eval_shape(logits_fn, probe)
  if len(out.shape) != 2 or out.shape[0] != 2:
    raise checks.InvjaxError(
        f"logits_fn must map [batch, ...] inputs to [batch, classes] logits, got shape "
        f"{tuple(out.shape)} for a batch of 2")
  if out.shape[1] < 2:
    raise checks.InvjaxError(f"logits_fn must return at least 2 classes, got {out.shape[1]}")
  return x, int(out.shape[1])


# ----------------------------------------------------------------------------- public


def predict(logits_fn: LogitsFn, x: Array, *, key: Array, sigma: float, num_samples: int,
            alpha: float = 0.001, batch_size: int = 1000) -> np.ndarray:
  """The smoothed classifier's prediction with an abstain option (Cohen et al., PREDICT).

  With the top two vote counts n_A, n_B among `num_samples` noisy copies, the class c_A is
  returned when the two-sided binomial test of n_A ~ Binomial(n_A + n_B, 1/2)
  (`scipy.stats.binomtest`) has p-value <= alpha; otherwise ABSTAIN. The probability of
  returning a class other than g(x) is at most alpha (Proposition 1).

  Args:
    logits_fn: the base classifier, `[batch, ...] -> [batch, classes]`; must act on each
      example independently (no batch statistics) and be hashable (functions are).
    x: float [batch, ...] inputs.
    key: PRNG key.
    sigma: the noise standard deviation, > 0.
    num_samples: noisy copies per example, >= 1.
    alpha: the test's level, in (0, 1).
    batch_size: the most noisy inputs per `logits_fn` call (at least one per example).

  Returns:
    int [batch]: the predicted class or ABSTAIN (-1).
  """
  x, num_classes = _validate(logits_fn, x, key, sigma, alpha, batch_size)
  num_samples = _count_arg(num_samples, "num_samples")
  counts = _counts(logits_fn, x, key, float(sigma), num_samples, int(batch_size), num_classes)
  out = _top_two_test(counts, float(alpha))
  chex.assert_shape(out, (x.shape[0],))
  return out


def certify(logits_fn: LogitsFn, x: Array, *, key: Array, sigma: float,
            num_selection: int = 100, num_samples: int = 100_000, alpha: float = 0.001,
            batch_size: int = 1000) -> Certificate:
  """Certified l2 radii of the smoothed classifier (Cohen et al., CERTIFY).

  c_A = the most voted class among `num_selection` noisy copies; n_A = its votes among
  `num_samples` fresh copies; p_lower = `lower_confidence_bound(n_A, num_samples, alpha)`.
  When p_lower > 1/2 the certificate is (c_A, sigma * Phi^-1(p_lower)) (Theorem 1 with
  p_B = 1 - p_A), else ABSTAIN with radius 0. With probability >= 1 - alpha over the noise
  the smoothed classifier predicts c_A in the whole open ball (Proposition 2). The largest
  radius N samples can give is sigma * Phi^-1(alpha^(1 / N)) (all votes for c_A), e.g.
  3.8 sigma for N = 100,000 and alpha = 0.001.

  Args:
    logits_fn: the base classifier, as in `predict`.
    x: float [batch, ...] inputs.
    key: PRNG key (split into the selection and the estimation keys).
    sigma: the noise standard deviation, > 0.
    num_selection: N0, noisy copies for choosing c_A, >= 1.
    num_samples: N, noisy copies for the estimate, >= 1.
    alpha: the failure probability, in (0, 1).
    batch_size: the most noisy inputs per `logits_fn` call (at least one per example).

  Returns:
    `Certificate` (numpy arrays over the batch).
  """
  x, num_classes = _validate(logits_fn, x, key, sigma, alpha, batch_size)
  num_selection = _count_arg(num_selection, "num_selection")
  num_samples = _count_arg(num_samples, "num_samples")
  sigma, alpha, batch_size = float(sigma), float(alpha), int(batch_size)
  key_selection, key_estimate = jax.random.split(key)
  counts0 = _counts(logits_fn, x, key_selection, sigma, num_selection, batch_size, num_classes)
  counts = _counts(logits_fn, x, key_estimate, sigma, num_samples, batch_size, num_classes)
  c_a = np.argmax(counts0, axis=1)
  p_lower = lower_confidence_bound(counts[np.arange(x.shape[0]), c_a], num_samples, alpha)
  certified = p_lower > 0.5
  radius = np.where(certified, sigma * stats.norm.ppf(np.where(certified, p_lower, 0.5)), 0.0)
  prediction = np.where(certified, c_a, ABSTAIN).astype(np.int64)
  chex.assert_shape([prediction, radius, p_lower], (x.shape[0],))
  return Certificate(prediction, radius, p_lower, counts, counts0)


def certified_accuracy(result: Certificate, y, radii: float | Sequence[float]) -> np.ndarray:
  """Certified accuracy at each radius: the fraction of examples certified as their label
  (not abstaining) with a certified radius >= r.

  Args:
    result: a `Certificate` from `certify`.
    y: int [batch] labels.
    radii: a radius or a sequence of radii, each finite and >= 0.

  Returns:
    float [len(radii)] (a 0-d array for a single radius).
  """
  prediction, radius = np.asarray(result.prediction), np.asarray(result.radius)
  checks.check_labels(y, prediction.shape[0], "y")
  r = np.asarray(radii, np.float64)
  if r.ndim > 1 or not np.all(np.isfinite(r)) or np.any(r < 0):
    raise checks.InvjaxError(f"radii must be a radius or a 1-d sequence of radii >= 0, got {radii}")
  correct = (prediction == np.asarray(y)) & (prediction != ABSTAIN)
  ok = correct[None, :] & (radius[None, :] >= np.atleast_1d(r)[:, None])
  acc = ok.mean(axis=1)
  return acc.reshape(r.shape)
