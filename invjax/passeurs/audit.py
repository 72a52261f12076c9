"""Audit for the buyer: does a training set look tuned to a given (public) test set?

The buyer holds the vendor's training set, the public test set the vendor was evaluated on,
and a private half of the test data the vendor never saw (the default split: official test
indices 0-4999 public, 5000-9999 private). Under the null hypothesis (an honest training set)
the public and private halves are exchangeable: any statistic that compares "public" with
"private" is distributed like the same statistic on a *random* half-split of the pooled test
set. Each statistic below is therefore compared against random re-splits (a randomisation
test), and turned into a one-sided p-value:

(a) `accuracy_gap`: accuracy of the train-fitted SVM on the public half minus on the private
    half; null: 2,000 random permutations of the public/private labels (exact Monte-Carlo p).
(b) `alignment_gap`: mean over classes of cos(w_train_c, w_public_c) - cos(w_train_c,
    w_private_c), with w_public / w_private SVMs fitted on each half's features; null: the
    same with SVMs fitted on `num_splits` random halves (z against their mean/std; Student-t
    prediction p-value with num_splits - 1 degrees of freedom).
(c) `margin_gap`: mean over training images of the multiclass margin (true-class score minus
    best other score, rows normalised to unit length) under w_public minus under w_private; a
    tuned training set sits deep inside the public SVM's classes. Same null as (b).
(d) pixel signature (only when the images are given): sign-gradient poisoning adds +-1 grey
    level noise to every pixel, which breaks the flat (exactly equal neighbour) areas that
    natural, JPEG-smoothed photos have. `pixel_flatness`: per image, the fraction of
    horizontally/vertically adjacent equal pixel pairs; one-sided Mann-Whitney test that the
    training images are less flat than the test images. `pixel_hf_energy`: per image, log mean
    squared residual from the 4-neighbour mean (high-frequency energy); one-sided Mann-Whitney
    test that the training images carry more. (d) assumes train and test images come from the
    same source and processing; a differently encoded training set also trips it.

The report's `flag` is raised when the smallest p-value is below `alpha / number of
statistics` (Bonferroni); `score = -log10(min p * number of statistics)` clipped at 0 (0 means
no evidence; 2 means the 1% level after correction).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict

import jax
import numpy as np
from scipy import stats

from invjax._src.checks import InvjaxError
from invjax.passeurs import features as features_lib
from invjax.passeurs import poison


@dataclasses.dataclass
class AuditReport:
  """flag: training set judged tuned to the public test set; score: evidence (see module doc);
  statistics: name -> {value, null_mean, null_std, z, p_value}; alpha: family-wise level."""
  flag: bool
  score: float
  statistics: Dict[str, Dict[str, float]]
  alpha: float

  def summary(self) -> str:
    lines = [f"audit: {'FLAGGED' if self.flag else 'not flagged'} (score {self.score:.2f}, "
             f"alpha {self.alpha} Bonferroni over {len(self.statistics)} statistics)"]
    for name, s in self.statistics.items():
      lines.append(f"  {name:>16s}: value {s['value']:+.4g}  null {s['null_mean']:+.3g} "
                   f"+- {s['null_std']:.3g}  z {s['z']:+.2f}  p {s['p_value']:.2e}")
    return "\n".join(lines)


def _unit_rows(w):
  w = np.asarray(w, np.float64)
  return w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)


def class_cosines(w_a, w_b) -> np.ndarray:
  """Cosine between matching rows (classes) of two weight matrices [K, d] -> [K]."""
  return np.sum(_unit_rows(w_a) * _unit_rows(w_b), axis=1)


def normalized_margins(w, features, labels) -> np.ndarray:
  """Multiclass margin s_y - max_{j != y} s_j with unit-norm rows of `w`, per example [N]."""
  s = np.asarray(features, np.float64) @ _unit_rows(w).T
  labels = np.asarray(labels)
  true = s[np.arange(len(labels)), labels]
  s[np.arange(len(labels)), labels] = -np.inf
  return true - s.max(axis=1)


def pixel_flatness(x_uint8) -> np.ndarray:
  """Per image, the fraction of adjacent (horizontal + vertical) pixel pairs that are equal [N]."""
  x = np.asarray(x_uint8)
  h = (x[:, :, 1:] == x[:, :, :-1]).mean(axis=(1, 2, 3))
  v = (x[:, 1:] == x[:, :-1]).mean(axis=(1, 2, 3))
  return (h + v) / 2


def pixel_hf_energy(x_uint8) -> np.ndarray:
  """Per image, log mean squared residual from the 4-neighbour mean (grey levels^2) [N]."""
  x = np.asarray(x_uint8, np.float32)
  r = x[:, 1:-1, 1:-1] - (x[:, :-2, 1:-1] + x[:, 2:, 1:-1] + x[:, 1:-1, :-2] + x[:, 1:-1, 2:]) / 4
  return np.log(np.mean(r ** 2, axis=(1, 2, 3)) + 1e-3)


def _stat(value, null, p):
  null = np.asarray(null, np.float64)
  sd = float(null.std(ddof=1)) if null.size > 1 else float("nan")
  z = (value - float(null.mean())) / sd if sd and np.isfinite(sd) and sd > 0 else float("nan")
  return dict(value=float(value), null_mean=float(null.mean()), null_std=sd, z=float(z),
              p_value=float(p))


def _t_pvalue(value, null):
  """One-sided p of `value` being above a new draw of `null` (Student-t prediction)."""
  null = np.asarray(null, np.float64)
  r = null.size
  sd = null.std(ddof=1)
  if sd <= 0:
    return 0.0 if value > null.mean() else 1.0
  t = (value - null.mean()) / (sd * np.sqrt(1 + 1 / r))
  return float(stats.t.sf(t, df=r - 1))


def audit(train_features, train_y, test_features, test_y, public, *,
          fit_fn: Callable[..., Any], key: jax.Array, train_x=None, test_x=None,
          num_splits: int = 8, num_permutations: int = 2000, alpha: float = 0.01,
          train_svm=None, progress: bool = False) -> AuditReport:
  """Statistics revealing a training set tuned to the public half of a test set.

  Args:
    train_features: float [N, d], features of the (possibly poisoned) training images.
    train_y: int [N] training labels.
    test_features: float [M, d], features of the test images (public and private).
    test_y: int [M] test labels.
    public: bool [M], True for the public half the vendor was evaluated on.
    fit_fn: `fit_fn(features, labels) -> svm params` (with `w` [K, d]), the buyer's pipeline.
    key: PRNG key for the random re-splits and permutations.
    train_x, test_x: optional uint8 images [N, H, W, C] / [M, H, W, C] for the pixel statistics.
    num_splits: random half-splits for the null of (b) and (c) (each costs two SVM fits); >= 2.
    num_permutations: permutations for the null of (a).
    alpha: family-wise significance level.
    train_svm: the SVM already fitted on the training features (saves one fit).
    progress: print one line per SVM fit.

  Returns:
    `AuditReport`.
  """
  ftr = np.asarray(train_features, np.float32)
  fte = np.asarray(test_features, np.float32)
  ytr, yte = np.asarray(train_y), np.asarray(test_y)
  public = np.asarray(public, bool)
  if ftr.ndim != 2 or fte.ndim != 2 or ftr.shape[1] != fte.shape[1]:
    raise InvjaxError(f"train_features [N, d] and test_features [M, d] must share d, got "
                      f"{ftr.shape} and {fte.shape}")
  if ytr.shape != (len(ftr),) or yte.shape != (len(fte),) or public.shape != (len(fte),):
    raise InvjaxError(f"labels/public must match the features: train_y {ytr.shape}, test_y "
                      f"{yte.shape}, public {public.shape} for {len(ftr)} / {len(fte)} examples")
  n_pub = int(public.sum())
  if n_pub == 0 or n_pub == len(public):
    raise InvjaxError("public must mark a non-empty proper subset of the test set")
  if int(num_splits) < 2:
    raise InvjaxError(f"num_splits must be >= 2, got {num_splits}")
  if not 0 < alpha < 1:
    raise InvjaxError(f"alpha must lie in (0, 1), got {alpha}")
  k_perm, k_split = jax.random.split(key)
  results: Dict[str, Dict[str, float]] = {}

  # (a) accuracy gap, permutation null.
  w_train = train_svm if train_svm is not None else fit_fn(ftr, ytr)
  w_tr = np.asarray(poison.svm_rows(w_train, "w"), np.float64)
  b_tr = poison.svm_rows(w_train, "b")
  s = fte @ w_tr.T + (0.0 if b_tr is None else np.asarray(b_tr))
  correct = (np.argmax(s, axis=1) == yte).astype(np.float64)
  gap = correct[public].mean() - correct[~public].mean()
  rng = np.random.default_rng(np.asarray(jax.random.randint(k_perm, (4,), 0, 2**31 - 1)).tolist())
  null_a = np.empty(int(num_permutations))
  for i in range(int(num_permutations)):
    m = np.zeros(len(public), bool)
    m[rng.choice(len(public), n_pub, replace=False)] = True
    null_a[i] = correct[m].mean() - correct[~m].mean()
  p_a = (1 + np.sum(null_a >= gap)) / (1 + len(null_a))
  results["accuracy_gap"] = _stat(gap, null_a, p_a)

  # (b), (c): SVMs on the public/private halves vs on random halves.
  def split_stats(mask):
    wa = poison.svm_rows(fit_fn(fte[mask], yte[mask]), "w")
    wb = poison.svm_rows(fit_fn(fte[~mask], yte[~mask]), "w")
    align = np.mean(class_cosines(w_tr, wa) - class_cosines(w_tr, wb))
    marg = np.mean(normalized_margins(wa, ftr, ytr) - normalized_margins(wb, ftr, ytr))
    if progress:
      print(f"audit split: alignment gap {align:+.4f}, margin gap {marg:+.4f}")
    return align, marg

  align, marg = split_stats(public)
  null_b, null_c = [], []
  for sk in jax.random.split(k_split, int(num_splits)):
    m = np.zeros(len(public), bool)
    m[np.asarray(jax.random.permutation(sk, len(public)))[:n_pub]] = True
    a, c = split_stats(m)
    null_b.append(a)
    null_c.append(c)
  results["alignment_gap"] = _stat(align, null_b, _t_pvalue(align, null_b))
  results["margin_gap"] = _stat(marg, null_c, _t_pvalue(marg, null_c))

  # (d) pixel signature.
  if train_x is not None and test_x is not None:
    for name, fn, alt in (("pixel_flatness", pixel_flatness, "less"),
                          ("pixel_hf_energy", pixel_hf_energy, "greater")):
      a, b = fn(train_x), fn(test_x)
      p = stats.mannwhitneyu(a, b, alternative=alt).pvalue
      # value: difference of means (train - test); null_std: its standard error.
      se = float(np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)))
      diff = float(a.mean() - b.mean())
      results[name] = dict(value=diff, null_mean=0.0, null_std=se,
                           z=diff / se if se > 0 else float("nan"), p_value=float(p))

  n = len(results)
  p_min = min(s["p_value"] for s in results.values())
  score = max(0.0, float(-np.log10(max(p_min * n, 1e-300))))
  return AuditReport(flag=bool(p_min < alpha / n), score=score, statistics=results, alpha=alpha)


def audit_datasets(extractor, train, test, public, *, fit_fn, key, batch_size: int = 256,
                   pixel: bool = True, progress: bool = False, **kwargs) -> AuditReport:
  """`audit` on datasets: embeds `train` and `test` with `extractor` (`features.embed`).

  Args:
    extractor: `invjax.passeurs.features.Extractor`.
    train, test: `invjax.data.Dataset` (uint8 images).
    public: bool mask over `test` (e.g. `experiment.split_mask(test)`).
    fit_fn, key, kwargs: see `audit`.
    batch_size: embedding batch size.
    pixel: include the pixel statistics (d).
    progress: progress bars.
  """
  ftr = features_lib.embed(extractor, train.x, batch_size=batch_size, progress=progress)
  fte = features_lib.embed(extractor, test.x, batch_size=batch_size, progress=progress)
  return audit(ftr, train.y, fte, test.y, public, fit_fn=fit_fn, key=key,
               train_x=train.x if pixel else None, test_x=test.x if pixel else None,
               progress=progress, **kwargs)
