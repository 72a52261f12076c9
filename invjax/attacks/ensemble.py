"""AutoAttack (Croce & Hein 2020): the ensemble, the per-example worst case, the sanity flags.

  report = autoattack(logits_fn, x, y, key=key, epsilon=8 / 255, norm="linf")
  report.robust_accuracy, report.broken_by[i], report.x_adv, report.to_json()

The report (`AutoAttackReport`, `AttackStats`) and its summaries (`markdown_table`,
`robustness_json`) live in `invjax.attacks.ensemble_report`, importable from here too.

The reference's protocol (fra31/auto-attack, `autoattack.py`), "standard", L_inf and L2:
  1. "apgd-ce": APGD on the cross-entropy, 100 iterations, 1 restart;
  2. "apgd-t":  APGD on the targeted DLR loss, the 9 most likely other classes, 100
     iterations, 1 restart per target;
  3. "fab-t":   targeted FAB, 9 target classes, 100 iterations, 1 restart;
  4. "square":  Square attack, 5,000 queries, 1 restart.
"plus" runs APGD-CE and APGD-DLR with 5 restarts, untargeted FAB with 5 restarts, Square,
APGD-T and FAB-T. `schedule(version, norm, num_steps=..., num_queries=...)` gives the steps
with smaller (or larger) budgets, e.g. for a smoke run; pass them as `steps=`.

Each attack runs only on the points that are still robust (correctly classified and not
broken by an earlier attack). A point is broken by the first attack that returns an input
which is (i) inside the epsilon ball, (ii) in [0, 1] and (iii) misclassified when the model is
evaluated on it again here (the attack's own `success` is not trusted); that input is kept as
the point's adversarial. At the end every reported adversarial is checked once more on the
model and an `InvjaxError` is raised if any fails (a randomised model fails it: make it
deterministic with `invjax.attacks.eot.expectation_logits`).
The attacks come from `invjax.attacks.autopgd` (`apgd`, `apgd_targeted`), `invjax.attacks.fab_attack`
(`fab`) and `invjax.attacks.square_attack` (`square`), imported when first needed; `attacks=` maps
any of those four names to a callable with the same signature instead. With
`across_processes=True` (a multi-process run) each process attacks its block of every attack's
chunks and the outcomes are gathered: the report is the single-process one on every process.

Sanity flags (as the reference's `checks.py`), each issued as an `AutoAttackWarning` and
recorded in `report.flags` (name -> message), never silently:
  randomized: two forward passes on the same input differ;
  probabilities: the outputs look like probabilities (rows >= 0 summing to 1), not logits;
  zero_gradients: the input gradient of the cross-entropy is exactly zero on some points;
  nonfinite_gradients: it is NaN or infinite on some points;
  too_few_classes: fewer classes than target classes + 1 (the targets are cut);
  square_improved: Square broke points the gradient attacks had not (gradient masking?);
  unconfirmed_success: an attack reported successes that re-evaluation does not confirm.
"""
from __future__ import annotations

import functools
import importlib
import time
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from invjax import parallel
from invjax._src import checks
from invjax._src.geometry import NORMS
from invjax.attacks import inputs
from invjax.attacks.ensemble_report import (AttackStats, AutoAttackReport, markdown_table,
                                            robustness_json)

__all__ = ("AttackStats", "AutoAttackReport", "AutoAttackWarning", "Step", "autoattack",
           "check_adversarials", "confirm", "markdown_table", "predict", "resolve_attacks",
           "robustness_json", "schedule")

LogitsFn = inputs.LogitsFn

VERSIONS = ("standard", "plus")
# registry name -> (module, function)
ATTACK_MODULES = {"apgd": ("invjax.attacks.autopgd", "apgd"),
                  "fab": ("invjax.attacks.fab_attack", "fab"),
                  "apgd_targeted": ("invjax.attacks.autopgd", "apgd_targeted"),
                  "square": ("invjax.attacks.square_attack", "square")}
# A reported adversarial may exceed epsilon by float rounding only.
BUDGET_RTOL, BUDGET_ATOL = 1e-4, 1e-6
RANDOMIZED_TOL = 1e-4  # max L2 distance of the L2-normalised logits of two passes
PROBABILITY_TOL = 1e-5
SQUARE_TOL = 0.002  # Square may lower the robust accuracy by this much before the flag


class AutoAttackWarning(UserWarning):
  """A sanity check of `autoattack` failed: the evaluation may be unreliable."""


class Step(NamedTuple):
  """One attack of the ensemble: its report name, registry name and budget keywords.

  `minimal_norm`: the attack minimises the distance (FAB), so successes outside the budget
  are expected and are not counted (nor flagged).
  """
  name: str
  attack: str
  kwargs: Mapping[str, Any]
  minimal_norm: bool = False


def schedule(version: str = "standard", norm: str = "linf", *, num_steps: Optional[int] = None,
             num_queries: Optional[int] = None, num_restarts: Optional[int] = None,
             num_target_classes: Optional[int] = None) -> Tuple[Step, ...]:
  """The steps of `version` (module docstring); a given budget replaces it in every step that
  has it (`num_steps`: APGD and FAB iterations, `num_queries`: Square's, `num_restarts`: every
  restart count, `num_target_classes`: APGD-T's and FAB-T's)."""
  if version not in VERSIONS:
    raise checks.InvjaxError(f"version must be one of {VERSIONS}, got {version!r}")
  if norm not in NORMS:
    raise checks.InvjaxError(f"norm must be one of {NORMS}, got {norm!r}")
  apgd = lambda loss, restarts: dict(loss=loss, num_steps=100, num_restarts=restarts)
  apgd_t = Step("apgd-t", "apgd_targeted",
                dict(num_steps=100, num_target_classes=9, num_restarts=1))
  fab_t = Step("fab-t", "fab", dict(num_steps=100, num_restarts=1, targeted=True,
                                    num_target_classes=9), minimal_norm=True)
  square = Step("square", "square", dict(num_queries=5000))
  if version == "standard":
    steps = (Step("apgd-ce", "apgd", apgd("ce", 1)), apgd_t, fab_t, square)
  else:
    steps = (Step("apgd-ce", "apgd", apgd("ce", 5)), Step("apgd-dlr", "apgd", apgd("dlr", 5)),
             Step("fab", "fab", dict(num_steps=100, num_restarts=5, targeted=False),
                  minimal_norm=True), square, apgd_t, fab_t)
  overrides = dict(num_steps=num_steps, num_queries=num_queries, num_restarts=num_restarts,
                   num_target_classes=num_target_classes)
  out = []
  for step in steps:
    kw = dict(step.kwargs)
    for name, value in overrides.items():
      if value is not None and name in kw:
        inputs.check_positive_int(value, name)
        kw[name] = int(value)
    out.append(step._replace(kwargs=kw))
  return tuple(out)


def resolve_attacks(steps: Sequence[Step], attacks: Optional[Mapping[str, Callable]] = None
                    ) -> Dict[str, Callable]:
  """{registry name: callable} for `steps`: from `attacks`, else imported (`ATTACK_MODULES`)."""
  out = {}
  for step in steps:
    if attacks is not None and step.attack in attacks:
      out[step.attack] = attacks[step.attack]
      continue
    if step.attack not in ATTACK_MODULES:
      raise checks.InvjaxError(f"step {step.name!r} names an unknown attack {step.attack!r}; "
                               f"known: {sorted(ATTACK_MODULES)} (or pass it in attacks=)")
    module, fn = ATTACK_MODULES[step.attack]
    try:
      out[step.attack] = getattr(importlib.import_module(module), fn)
    except (ImportError, AttributeError) as e:
      raise checks.InvjaxError(f"step {step.name!r} needs {module}.{fn}, which is not "
                               f"available ({e}); pass attacks={{{step.attack!r}: fn}}") from e
  return out


def _flag(flags: Dict[str, str], name: str, message: str) -> None:
  """Records a flag (a repeated flag keeps its messages); `autoattack` warns for each."""
  flags[name] = f"{flags[name]}; {message}" if name in flags else message


def _chunks(idx: np.ndarray, batch_size: Optional[int]):
  size = len(idx) if not batch_size else int(batch_size)
  return [idx[i:i + size] for i in range(0, len(idx), max(size, 1))]


@functools.lru_cache(maxsize=None)
def _jitted(logits_fn: LogitsFn) -> Tuple[Callable, Callable]:
  """(jit(logits_fn), jit(input gradient of the summed cross-entropy)), compiled once."""
  ce = lambda v, t: jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits_fn(v), t))
  return jax.jit(logits_fn), jax.jit(jax.grad(ce))


def predict(logits_fn: LogitsFn, x, batch_size: Optional[int] = None) -> np.ndarray:
  """`logits_fn(x)` as numpy, jitted once per `logits_fn`, `batch_size` points at a time."""
  fn, x = _jitted(logits_fn)[0], np.asarray(x)
  parts = [np.asarray(fn(x[c])) for c in _chunks(np.arange(len(x)), batch_size)]
  return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _distances(x, x_adv, norm: str) -> np.ndarray:
  d = (np.asarray(x_adv, np.float64) - np.asarray(x, np.float64)).reshape(len(x), -1)
  return np.max(np.abs(d), axis=1) if norm == "linf" else np.sqrt(np.sum(d * d, axis=1))


def confirm(logits_fn: LogitsFn, x, x_adv, y, *, epsilon: float, norm: str,
            batch_size: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
  """(misclassified by `logits_fn`, inside the budget and [0, 1]), bool [n] each, for `x_adv`."""
  x_adv = np.asarray(x_adv)
  pred = np.argmax(predict(logits_fn, x_adv, batch_size), axis=-1)
  flat = x_adv.reshape(len(x_adv), -1)
  valid = np.all(np.isfinite(flat) & (flat >= 0.0) & (flat <= 1.0), axis=1)
  within = _distances(x, x_adv, norm) <= epsilon * (1 + BUDGET_RTOL) + BUDGET_ATOL
  return pred != np.asarray(y), valid & within


def _sanity_checks(logits_fn, x, y, correct, num_classes, steps, batch_size, flags):
  """The flags computed before the attacks; returns the steps with their targets cut."""
  probe = x[:min(len(x), batch_size or 250)]
  a, b = np.asarray(logits_fn(probe)), np.asarray(logits_fn(probe))
  unit = lambda v: v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-10)
  diff = float(np.max(np.linalg.norm(unit(a) - unit(b), axis=1), initial=0.0))
  if diff > RANDOMIZED_TOL or np.any(a.argmax(1) != b.argmax(1)):
    _flag(flags, "randomized", f"two forward passes on the same input differ (max distance "
          f"{diff:.3g} of the normalised logits): a randomised model; evaluate its expectation "
          "(invjax.attacks.eot.expectation_logits)")
  if (a.min() > -PROBABILITY_TOL and a.max() < 1 + PROBABILITY_TOL
      and np.all(np.abs(a.sum(1) - 1) < PROBABILITY_TOL)):
    _flag(flags, "probabilities", "the outputs look like probabilities (non-negative rows "
          "summing to 1): pass logits, not softmax outputs")
  idx = np.flatnonzero(correct)
  if idx.size:
    grad_fn = _jitted(logits_fn)[1]
    mass, finite = [], []
    for c in _chunks(idx, batch_size):
      g = np.asarray(grad_fn(jnp.asarray(x[c]), jnp.asarray(y[c]))).reshape(len(c), -1)
      finite.append(np.all(np.isfinite(g), axis=1))
      mass.append(np.sum(np.abs(np.where(np.isfinite(g), g, 0.0)), axis=1))
    finite = np.concatenate(finite)
    zero, bad = int(np.sum((np.concatenate(mass) == 0) & finite)), int(np.sum(~finite))
    if zero:
      _flag(flags, "zero_gradients", f"the input gradient of the cross-entropy is exactly "
            f"zero on {zero} of {idx.size} point(s): gradient attacks cannot work there (masked "
            "gradients?); trust Square's result, or attack a differentiable surrogate (BPDA)")
    if bad:
      _flag(flags, "nonfinite_gradients", f"the input gradient is NaN or infinite on {bad} of "
            f"{idx.size} point(s)")
  out = []
  for step in steps:
    k = step.kwargs.get("num_target_classes")
    if k is not None and k > num_classes - 1:
      _flag(flags, "too_few_classes", f"{step.name} asks for {k} target classes but the "
            f"model has {num_classes} classes; using {num_classes - 1}")
      step = step._replace(kwargs={**step.kwargs, "num_target_classes": num_classes - 1})
    out.append(step)
  return tuple(out)


def _attack_chunk(attack, step: Step, logits_fn, x, y, *, key, epsilon, norm, batch_size):
  """One attack on one chunk: (confirmed bool [n], its outputs [n, ...], counts int64 [4]:
  gradient and forward evaluations, unconfirmed successes, minimal-norm successes beyond
  epsilon)."""
  result = attack(logits_fn, jnp.asarray(x), jnp.asarray(y), key=key, epsilon=epsilon,
                  norm=norm, **step.kwargs)
  cand = np.asarray(result.x_adv)
  mis, ok = confirm(logits_fn, x, cand, y, epsilon=epsilon, norm=norm, batch_size=batch_size)
  reported = np.asarray(result.success, bool)
  flat = cand.reshape(len(x), -1)
  in_box = np.all(np.isfinite(flat) & (flat >= 0.0) & (flat <= 1.0), axis=1)
  outside = 0
  if step.minimal_norm:  # a success beyond epsilon is a minimal-norm attack's normal answer
    beyond = reported & mis & ~ok & in_box
    outside = int(np.sum(beyond))
    unconfirmed = int(np.sum(reported & ~(mis & ok) & ~beyond))
  else:
    unconfirmed = int(np.sum(reported & ~(mis & ok)))
  per_point = lambda v: int(np.sum(np.broadcast_to(np.asarray(v), (len(x),))))
  counts = np.asarray([per_point(result.num_grad_evals), per_point(result.num_forward_evals),
                       unconfirmed, outside], np.int64)
  return mis & ok, cand.astype(np.float32), counts


def _run_chunks(attack_chunk, chunks, image_shape, across_processes: bool):
  """`attack_chunk(c, chunk)` for every chunk, in order; across processes, each process its
  contiguous block of chunks (`parallel.process_block`), the outcomes all-gathered."""
  if not across_processes or jax.process_count() == 1:
    return [attack_chunk(c, chunk) for c, chunk in enumerate(chunks)]
  count, sizes = jax.process_count(), [len(chunk) for chunk in chunks]
  blocks = [parallel.process_block(len(chunks), process_index=p, process_count=count)
            for p in range(count)]
  mine = [attack_chunk(c, chunks[c]) for c in range(blocks[jax.process_index()].start,
                                                    blocks[jax.process_index()].stop)]
  rows = [sum(sizes[b]) for b in blocks]
  cat = lambda parts, shape, dtype: (np.concatenate(parts) if parts
                                     else np.zeros((0,) + shape, dtype))
  won = parallel.gather_blocks(cat([m[0].astype(np.uint8) for m in mine], (), np.uint8), rows)
  cand = parallel.gather_blocks(cat([m[1] for m in mine], tuple(image_shape), np.float32), rows)
  counts = parallel.gather_blocks(cat([m[2][None] for m in mine], (4,), np.int64),
                                  [b.stop - b.start for b in blocks])
  ends = np.cumsum(sizes)[:-1]
  return list(zip([w.astype(bool) for w in np.split(won, ends)], np.split(cand, ends), counts))


def autoattack(logits_fn: LogitsFn, x, y, *, key: jax.Array, epsilon: float,
               norm: str = "linf", version: str = "standard",
               attacks: Optional[Mapping[str, Callable]] = None,
               steps: Optional[Sequence[Step]] = None,
               batch_size: Optional[int] = None,
               across_processes: bool = False) -> AutoAttackReport:
  """AutoAttack's worst case over its attacks at one budget (see the module docstring).

  Args:
    logits_fn: the model, `[batch, ...] -> logits [batch, classes]`, deterministic.
    x: float [n, ...] inputs in [0, 1].
    y: int [n] labels.
    key: PRNG key (each attack and batch gets its own fold).
    epsilon: the budget, a positive scalar.
    norm: "linf" or "l2".
    version: "standard" or "plus" (the report's label when `steps` is given).
    attacks: registry name -> attack callable, replacing the imported ones.
    steps: the attacks to run in order (`schedule(...)`); default `schedule(version, norm)`.
    batch_size: attack (and evaluate) at most this many points at once (None: all).
    across_processes: in a multi-process run (`jax.distributed`), each process attacks its
      contiguous block of each attack's chunks (of `batch_size` points, with the keys of a
      single-process run) and the outcomes are all-gathered: every process, called with the
      same arguments, returns the single-process report (times aside). The clean
      predictions and the sanity checks run on every process.

  Returns:
    `AutoAttackReport`.

  Raises:
    InvjaxError: bad inputs, a missing attack, or a reported adversarial that is outside the
      budget or [0, 1] or not misclassified when checked again.
  """
  t_start = time.time()
  inputs.validate(logits_fn, x, y, epsilon=epsilon,
                  choices=(("norm", norm, NORMS), ("version", version, VERSIONS)))
  if np.ndim(epsilon) != 0:
    raise checks.InvjaxError(f"epsilon must be a scalar, got shape {np.shape(epsilon)}")
  if batch_size is not None:
    inputs.check_positive_int(batch_size, "batch_size")
  epsilon = float(epsilon)
  steps = schedule(version, norm) if steps is None else tuple(steps)
  registry = resolve_attacks(steps, attacks)
  x = np.asarray(x, np.float32)
  y = np.asarray(y).astype(np.int32)
  n = len(x)
  clean_logits = predict(logits_fn, x, batch_size)
  correct = np.argmax(clean_logits, axis=-1) == y
  flags: Dict[str, str] = {}
  steps = _sanity_checks(logits_fn, x, y, correct, clean_logits.shape[1], steps, batch_size,
                         flags)
  robust = correct.copy()
  x_adv = x.copy()
  broken_by = [None if c else "clean" for c in correct]
  stats = []
  for s, step in enumerate(steps):
    idx = np.flatnonzero(robust)
    t0 = time.time()
    broken = grads = forwards = unconfirmed = outside = 0
    attack_chunk = lambda c, chunk, s=s, step=step: _attack_chunk(
        registry[step.attack], step, logits_fn, x[chunk], y[chunk],
        key=jax.random.fold_in(jax.random.fold_in(key, s), c), epsilon=epsilon, norm=norm,
        batch_size=batch_size)
    chunks = _chunks(idx, batch_size)
    for chunk, (won_mask, cand, counts) in zip(chunks, _run_chunks(
        attack_chunk, chunks, x.shape[1:], across_processes)):
      won = chunk[won_mask]
      x_adv[won] = cand[won_mask]
      robust[won] = False
      for i in won:
        broken_by[i] = step.name
      broken += len(won)
      grads, forwards = grads + int(counts[0]), forwards + int(counts[1])
      unconfirmed, outside = unconfirmed + int(counts[2]), outside + int(counts[3])
    stats.append(AttackStats(step.name, int(idx.size), broken, float(np.mean(robust)) if n else 0.,
                             grads, forwards, time.time() - t0, unconfirmed, outside))
    if unconfirmed:
      _flag(flags, "unconfirmed_success", f"{step.name} reported {unconfirmed} success(es) "
            "that re-evaluating the model does not confirm (outside the budget or [0, 1], or "
            "classified correctly); they were not counted")
  names = [a.name for a in stats]
  by_square = stats[names.index("square")].num_broken if "square" in names[1:] else 0
  if n and by_square / n > SQUARE_TOL:
    _flag(flags, "square_improved", f"Square broke {by_square} point(s) that the gradient "
          f"attacks before it had not (robust accuracy -{by_square / n:.1%}): the gradients may "
          "be masked; run Square with more queries or an adaptive attack")
  for message in flags.values():
    warnings.warn(f"autoattack: {message}", AutoAttackWarning, stacklevel=2)
  check_adversarials(logits_fn, x, y, x_adv, broken_by, epsilon=epsilon, norm=norm,
                     batch_size=batch_size)
  return AutoAttackReport(norm, epsilon, version, n, float(np.mean(correct)) if n else 0.,
                          float(np.mean(robust)) if n else 0., tuple(broken_by), x_adv,
                          tuple(stats), flags, time.time() - t_start)


def check_adversarials(logits_fn: LogitsFn, x, y, x_adv, broken_by: Sequence[Optional[str]], *,
                       epsilon: float, norm: str, batch_size: Optional[int] = None) -> None:
  """Raises `InvjaxError` unless every point broken by an attack has an adversarial inside the
  budget and [0, 1] that the model misclassifies, and every other point kept its input."""
  x, x_adv, y = np.asarray(x), np.asarray(x_adv), np.asarray(y)
  attacked = np.array([b not in (None, "clean") for b in broken_by], bool)
  if np.any(x_adv[~attacked] != x[~attacked]):
    raise checks.InvjaxError("autoattack: a point no attack broke has x_adv != x")
  idx = np.flatnonzero(attacked)
  if not idx.size:
    return
  mis, ok = confirm(logits_fn, x[idx], x_adv[idx], y[idx], epsilon=epsilon, norm=norm,
                    batch_size=batch_size)
  bad = idx[~(mis & ok)]
  if bad.size:
    raise checks.InvjaxError(
        f"autoattack: {bad.size} reported adversarial(s) fail the final check (outside the "
        f"{norm} ball of radius {epsilon:.6g} or [0, 1], or classified correctly when "
        f"evaluated again), first: index {int(bad[0])} by {broken_by[int(bad[0])]}; a "
        "randomised model gives this: evaluate its expectation (invjax.attacks.eot)")
