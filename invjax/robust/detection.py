"""Likelihood-based detection of adversarial images with hybrid (flow + head) models.

A hybrid model (`invjax.flows.InvertibleClassifier` over a flow with a log-det, e.g. Glow
trained with CE + bits/dim) is also a density: `log p(x) = log N(z; 0, I) + log_det` with
`z = encode(x)`. Its bits per dimension on 8-bit images dequantised to [0, 1],

  bpd(x) = -(log N(z) + log_det) / (D ln 2) + log2(256)      (`invjax.flows.nll_bits_per_dim`;
                                                             the +8 is the [0,1] -> 256-bin offset)

is a detector: flag an image whose bpd is above a threshold set on clean data. This module
measures how well that works and how easily it is evaded:

* `roc_auc(negative, positive)`: the ROC AUC of a score (here bpd) separating clean
  (negative) from adversarial (positive) images, the Mann-Whitney probability
  `P(s_pos > s_neg) + P(s_pos = s_neg) / 2` from midranks (a few lines of numpy, so that
  scikit-learn is no dependency). NaN scores count as +inf (a NaN likelihood is flagged).
* `adaptive_attack`: the attack that knows the detector (a detector is only credible against
  it): PGD on `CE(logits(x'), y) - lam * max(bpd(x') - threshold, 0)`, the threshold being
  the clean median bpd, so the likelihood stays in range; among the iterates that fool the
  classifier it keeps the one with the lowest bpd.
* `detection_report`: clean vs PGD vs latent-attack vs adaptive images at one epsilon: attack
  success, median bpd, AUC vs clean, and the fraction of images that both fool the classifier
  and pass the detector at a threshold with `fpr` false positives on clean data. The attacks
  run on the clean images the classifier gets right (by default): a clean error is no attack
  success, and counting it as one inflates every attack row by the clean error rate.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from invjax._src import checks
from invjax._src import compilation
from invjax._src.geometry import NORMS, project
from invjax.attacks import inputs
from invjax.attacks import latent
from invjax.attacks.result import AttackResult, from_adversarial
from invjax.flows.classifier import nll_bits_per_dim
from invjax.robust import invertibility

Array = jax.Array
ATTACKS = ("pgd", "latent", "adaptive")


# ----------------------------------------------------------------------------- scores


def bits_per_dim_function(model: Any, variables: Any, *, input_offset: float = 0.0,
                          num_bins: int = 256, key: Optional[Array] = None
                          ) -> Callable[[Array], Array]:
  """`x -> bits/dim [B]` of a hybrid classifier (`apply -> (logits, z, log_det)`) or a flow
  (`apply -> (z, log_det)`); the model sees `x + input_offset` (a shift: log-det 0)."""
  off = float(input_offset)
  rngs = {"logdet": jax.random.PRNGKey(0) if key is None else key}

  def bpd(v):
    out = model.apply(variables, v + off, rngs=rngs)
    if not isinstance(out, tuple) or len(out) not in (2, 3):
      raise checks.InvjaxError(
          f"{type(model).__name__}.apply must return (logits, z, log_det) or (z, log_det)")
    z, log_det = out[-2:]
    return nll_bits_per_dim(z, log_det, num_bins=num_bins)

  return bpd


def bits_per_dim(model: Any, variables: Any, x: Array, *, input_offset: float = 0.0,
                 num_bins: int = 256, key: Optional[Array] = None) -> np.ndarray:
  """Bits/dim `[N]` of the images `x` (float, in [0, 1]) under the model (module doc)."""
  checks.check_floating(x, "x")
  fn = bits_per_dim_function(model, variables, input_offset=input_offset, num_bins=num_bins,
                             key=key)
  return np.asarray(compilation.jit(fn)(jnp.asarray(x)))


def roc_auc(negative, positive) -> float:
  """ROC AUC of scores, `positive` (e.g. adversarial) expected higher than `negative` (clean).

  Equals `P(s_pos > s_neg) + P(s_pos == s_neg) / 2` over all pairs (ties count one half),
  computed from the midranks of the pooled scores (the Mann-Whitney U statistic over
  `n_pos * n_neg`). NaN scores are treated as +inf.
  """
  neg = np.asarray(negative, np.float64).ravel()
  pos = np.asarray(positive, np.float64).ravel()
  if neg.size == 0 or pos.size == 0:
    raise checks.InvjaxError(f"roc_auc needs scores in both sets, got {neg.size} negative and "
                             f"{pos.size} positive")
  pooled = np.concatenate([neg, pos])
  pooled = np.where(np.isnan(pooled), np.inf, pooled)
  _, inverse, counts = np.unique(pooled, return_inverse=True, return_counts=True)
  last = np.cumsum(counts)                       # 1-based rank of each distinct value's last copy
  midrank = last - (counts - 1) / 2.0
  rank_sum = np.sum(midrank[inverse][neg.size:])
  u = rank_sum - pos.size * (pos.size + 1) / 2.0
  return float(u / (pos.size * neg.size))


# ----------------------------------------------------------------------------- adaptive attack


@functools.partial(compilation.jit, static_argnames=("logits_fn", "bpd_fn", "num_steps", "norm",
                                                     "random_start"))
def _adaptive(logits_fn, bpd_fn, x, y, key, eps, alpha, threshold, lam, *, num_steps, norm,
              random_start):
  def objective(v):
    logits, bpd = logits_fn(v), bpd_fn(v)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return jnp.sum(ce - lam * jnp.maximum(bpd - threshold, 0.0)), (logits, bpd)

  grad_fn = jax.value_and_grad(objective, has_aux=True)
  shape = (-1,) + (1,) * (x.ndim - 1)

  def keep(best, cur, logits, bpd):
    best_x, best_bpd, found = best
    adv = jnp.argmax(logits, -1) != y
    better = adv & ((bpd < best_bpd) | ~found)
    return (jnp.where(better.reshape(shape), cur, best_x), jnp.where(better, bpd, best_bpd),
            found | adv)

  def body(_, state):
    cur, best = state
    (_, (logits, bpd)), g = grad_fn(cur)
    best = keep(best, cur, logits, bpd)
    step = jnp.sign(g) if norm == "linf" else g / jnp.maximum(
        jnp.sqrt(jnp.sum(jnp.square(g), axis=tuple(range(1, g.ndim)), keepdims=True)), 1e-12)
    return project(cur + alpha.reshape(shape) * step, x, eps, norm), best

  if random_start:
    if norm == "linf":
      delta = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * eps.reshape(shape)
    else:  # uniform in the l2 ball: a uniform direction, radius eps * U^(1/dim)
      k_dir, k_rad = jax.random.split(key)
      direction = jax.random.normal(k_dir, x.shape, x.dtype)
      direction = direction / jnp.sqrt(jnp.sum(jnp.square(direction), axis=tuple(
          range(1, x.ndim)), keepdims=True))
      radius = jax.random.uniform(k_rad, (x.shape[0],), x.dtype) ** (1.0 / x[0].size)
      delta = direction * (radius * eps).reshape(shape)
    start = project(x + delta, x, eps, norm)
  else:
    start = x
  best0 = (x, jnp.full((x.shape[0],), jnp.inf, x.dtype), jnp.zeros((x.shape[0],), bool))
  cur, best = jax.lax.fori_loop(0, num_steps, body, (start, best0))
  best = keep(best, cur, logits_fn(cur), bpd_fn(cur))
  x_adv = jnp.where(best[2].reshape(shape), best[0], cur)
  return from_adversarial(logits_fn, x, x_adv, y, num_grad_evals=num_steps,
                          num_forward_evals=num_steps + 1)


def adaptive_attack(logits_fn: Callable[[Array], Array], x: Array, y: Array, *, key: Array,
                    bpd_fn: Callable[[Array], Array], threshold, lam: float = 1.0,
                    epsilon=8 / 255, num_steps: int = 20, step_size=None, norm: str = "linf",
                    random_start: bool = True) -> AttackResult:
  """PGD that fools the classifier AND keeps the likelihood in range (module doc).

  Maximises `CE(logits_fn(x'), y) - lam * max(bpd_fn(x') - threshold, 0)` by projected
  steepest ascent (sign steps for L_inf, normalised gradient for L2) in the `epsilon` ball
  around `x` within [0, 1]; returns, per example, the adversarial iterate with the lowest
  bpd (the last iterate where none fooled the classifier; success is re-checked on
  `logits_fn`).

  Args:
    logits_fn: `x -> logits [B, K]`; bpd_fn: `x -> bits/dim [B]` (`bits_per_dim_function`).
      Both must be hashable (functions are) and batch-independent.
    x: float [B, ...] images in [0, 1]; y: int [B] labels.
    key: PRNG key of the random start.
    threshold: bits/dim the penalty starts at (scalar; the clean median in `detection_report`).
    lam: penalty weight, >= 0 (0: PGD on the cross-entropy alone, still returning its
      lowest-bpd adversarial iterate).
    epsilon, num_steps, step_size (default `2.5 * epsilon / num_steps`), norm, random_start:
      as in `invjax.attacks.pgd`.

  Returns:
    `AttackResult`.
  """
  inputs.validate(logits_fn, x, y, epsilon=epsilon, step_size=step_size,
                  choices=(("norm", norm, NORMS),))
  inputs.check_positive_int(num_steps, "num_steps")
  checks.check_positive(lam, "lam", strict=False)
  checks.check_finite(threshold, "threshold")
  batch = np.shape(x)[0]
  eps = jnp.broadcast_to(jnp.asarray(epsilon, jnp.float32), (batch,))
  alpha = 2.5 * eps / num_steps if step_size is None else jnp.broadcast_to(
      jnp.asarray(step_size, jnp.float32), (batch,))
  return _adaptive(logits_fn, bpd_fn, jnp.asarray(x), jnp.asarray(y), key, eps, alpha,
                   jnp.asarray(threshold, jnp.float32), jnp.asarray(lam, jnp.float32),
                   num_steps=int(num_steps), norm=norm, random_start=bool(random_start))


# ----------------------------------------------------------------------------- the report


class DetectionRow(NamedTuple):
  """One set of images: how often it fools the classifier and how the detector sees it.

  The clean row has all N images; an attack row has the attacked ones (`DetectionReport.
  attacked`: the correctly classified clean images by default).
  """
  name: str
  success: np.ndarray        # bool [n]: misclassified (clean: the clean errors)
  bits_per_dim: np.ndarray   # [n]
  auc: float                 # ROC AUC of bits/dim vs all clean images (NaN for clean)
  evasion: np.ndarray        # bool [n]: success and bits/dim <= the detector threshold


class DetectionReport(NamedTuple):
  """`detection_report`'s result: a row per set of images and the settings."""
  rows: Tuple[DetectionRow, ...]
  threshold: float           # detector: flag bits/dim > threshold (clean 1 - fpr quantile)
  fpr: float
  epsilon: float
  norm: str
  attacked: np.ndarray       # bool [N]: the clean images the attacks ran on
  only_correct: bool         # attacked = the correctly classified ones (else all)

  def get(self, name: str) -> DetectionRow:
    for r in self.rows:
      if r.name == name:
        return r
    raise checks.InvjaxError(f"no row {name!r}, the report has {[r.name for r in self.rows]}")

  def summary(self) -> Tuple[dict, ...]:
    """Python numbers per row: images, success rate, median bits/dim, AUC, evasion rate."""
    return tuple({"images": r.name, "n": int(r.success.size),
                  "success_rate": float(np.mean(r.success)),
                  "bpd_median": float(np.median(r.bits_per_dim)), "auc": r.auc,
                  "evasion_rate": float(np.mean(r.evasion))} for r in self.rows)

  def markdown(self) -> str:
    """A markdown table, one row per set of images."""
    lines = ["| images | n | attack success | bits/dim median | AUC vs clean "
             f"| fools classifier and detector ({100 * self.fpr:g}% FPR) |",
             "|---|---|---|---|---|---|"]
    for s in self.summary():
      auc = "-" if np.isnan(s["auc"]) else f"{s['auc']:.3f}"
      lines.append(f"| {s['images']} | {s['n']} | {100 * s['success_rate']:.1f}% | "
                   f"{s['bpd_median']:.3f} | {auc} | {100 * s['evasion_rate']:.1f}% |")
    lines.append("")
    attacked = ("the correctly classified clean images" if self.only_correct
                else "all clean images (clean errors count as successes)")
    lines.append(f"{self.norm} epsilon {self.epsilon:.4g}; detector: bits/dim > "
                 f"{self.threshold:.4f} (the clean {1 - self.fpr:g} quantile of all clean "
                 f"images). Clean row: 'attack success' is the clean error. The attacks run on "
                 f"{attacked}; AUC is against all clean images.")
    return "\n".join(lines)


def detection_report(model: Any, variables: Any, x: Array, y: Array, *, key: Array,
                     epsilon: float = 8 / 255, norm: str = "linf", num_steps: int = 10,
                     attacks: Sequence[str] = ATTACKS,
                     adaptive_lambdas: Sequence[float] = (1.0, 10.0),
                     latent_method: str = "jacobian", input_offset: float = 0.0,
                     num_bins: int = 256, fpr: float = 0.05,
                     only_correct: bool = True) -> DetectionReport:
  """Clean vs PGD vs latent-attack vs adaptive images, seen by the bits/dim detector.

  Args:
    model, variables: a hybrid invertible classifier (`apply -> (logits, z, log_det)`,
      `encode` / `decode` / `logits`; a linear head is used when it has `linear_head`).
    x: float [N, ...] clean images in [0, 1]; y: int [N] labels.
    key: PRNG key.
    epsilon, norm: the budget of every attack (the latent attack's images are projected on
      the same ball).
    num_steps: PGD and adaptive steps (PGD runs all of them: no early stop).
    attacks: a subset of ("pgd", "latent", "adaptive").
    adaptive_lambdas: one adaptive row per penalty weight.
    latent_method: `invjax.attacks.latent_attack`'s method.
    input_offset: the model sees `x + input_offset`.
    num_bins: quantisation levels of the images (256: 8-bit).
    fpr: the detector's threshold is the clean `1 - fpr` quantile of bits/dim (all images).
    only_correct: attack only the clean images the classifier gets right (attack success
      is then the fraction of those it flips); False: attack all of them (a clean error
      then counts as a success).

  Returns:
    `DetectionReport` (`.markdown()` for the table).
  """
  unknown = set(attacks) - set(ATTACKS)
  if unknown:
    raise checks.InvjaxError(f"unknown attacks {sorted(unknown)}, expected some of {ATTACKS}")
  checks.check_in_open_interval(fpr, 0.0, 1.0, "fpr")
  k_pgd, k_adapt = jax.random.split(key)
  logits_fn = invertibility.logits_function(model, variables, input_offset=input_offset)
  bpd_fn = bits_per_dim_function(model, variables, input_offset=input_offset,
                                 num_bins=num_bins)
  bpd_jit = compilation.jit(bpd_fn)
  x, y = jnp.asarray(x), jnp.asarray(y)
  clean_bpd = np.asarray(bpd_jit(x))
  threshold = float(np.quantile(clean_bpd, 1.0 - fpr))
  clean_success = np.asarray(jnp.argmax(logits_fn(x), -1) != y)
  attacked = ~clean_success if only_correct else np.ones_like(clean_success)
  if not np.any(attacked):
    raise checks.InvjaxError(f"the classifier gets none of the {clean_success.size} clean "
                             "images right: no image to attack (only_correct=True)")
  rows = [DetectionRow("clean", clean_success, clean_bpd, float("nan"),
                       clean_success & (np.nan_to_num(clean_bpd, nan=np.inf) <= threshold))]
  idx = np.flatnonzero(attacked)
  x, y = x[idx], y[idx]
  sets = []
  if "pgd" in attacks:
    res = invertibility.pgd_examples(model, variables, x, y, key=k_pgd, epsilon=epsilon,
                                     num_steps=num_steps, norm=norm, input_offset=input_offset,
                                     early_stop=False)
    sets.append(("pgd", res.x_adv))
  if "latent" in attacks:
    encode, decode = invertibility.codec(model, variables, input_offset=input_offset)
    head = (model.apply(variables, method="linear_head") if hasattr(model, "linear_head")
            else (lambda z: model.apply(variables, z, method="logits")))
    res = latent.latent_attack(encode, decode, head, x, y, method=latent_method,
                               epsilon=epsilon, norm=norm)
    sets.append((f"latent ({latent_method})", res.x_adv))
  if "adaptive" in attacks:
    median = float(np.median(clean_bpd))
    for i, lam in enumerate(adaptive_lambdas):
      res = adaptive_attack(logits_fn, x, y, key=jax.random.fold_in(k_adapt, i), bpd_fn=bpd_fn,
                            threshold=median, lam=lam, epsilon=epsilon, num_steps=num_steps,
                            norm=norm)
      sets.append((f"adaptive (lambda {lam:g})", res.x_adv))
  for name, v in sets:
    success = np.asarray(jnp.argmax(logits_fn(v), -1) != y)
    bpd = np.asarray(bpd_jit(v))
    evasion = success & (np.nan_to_num(bpd, nan=np.inf) <= threshold)
    rows.append(DetectionRow(name, success, bpd, roc_auc(clean_bpd, bpd), evasion))
  return DetectionReport(tuple(rows), threshold, float(fpr), float(epsilon), norm, attacked,
                         bool(only_correct))
