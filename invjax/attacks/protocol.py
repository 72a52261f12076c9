"""PGD against the AutoAttack protocol on the same model and images, side by side.

A robustness number measured with one gradient attack is an upper bound that a stronger
attack may lower; reviewers accept the AutoAttack protocol (Croce & Hein 2020). `compare`
runs both at each budget on the same images and reports the gap:

  rows = compare({"teacher": teacher_fn, "student": student_fn}, x, y, key=key,
                 budgets=[("linf", 8 / 255), ("l2", 0.5)], pgd_steps=20)
  print(markdown(rows))

PGD is the baseline of `invjax.attacks.pgd` (one restart, random start, step size
`2.5 * epsilon / steps`, as in the distillation transfer table); AutoAttack is
`invjax.attacks.autoattack` with its per-example worst case. With `transfer_to`, the
adversarials of every other model are also evaluated on that model (the fraction it
misclassifies among the points it classifies correctly): how a robustness claim made through
a surrogate holds up under the stronger attack.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import jax
import numpy as np

from invjax._src import checks
from invjax.attacks import gradient
from invjax.attacks import inputs
from invjax.attacks.ensemble import autoattack, predict, schedule

LogitsFn = Callable[[jax.Array], jax.Array]


class ProtocolRow(NamedTuple):
  """One model at one budget.

  clean_accuracy, pgd_robust_accuracy, autoattack_robust_accuracy: over all `num_examples`.
  broken_by: attack name -> points it broke first under AutoAttack ("clean": misclassified).
  transfer_pgd, transfer_autoattack: with `transfer_to`, the fraction of the points the
    target model classifies correctly that it misclassifies on this model's adversarials
    (None for the target itself or without `transfer_to`).
  flags: AutoAttack's sanity flags.
  """
  model: str
  norm: str
  epsilon: float
  num_examples: int
  clean_accuracy: float
  pgd_robust_accuracy: float
  autoattack_robust_accuracy: float
  broken_by: Dict[str, int]
  pgd_seconds: float
  autoattack_seconds: float
  transfer_pgd: Optional[float]
  transfer_autoattack: Optional[float]
  flags: Dict[str, str]

  def to_json(self) -> Dict:
    return dict(self._asdict())


def _pgd(logits_fn, x, y, *, key, norm, epsilon, num_steps, batch_size) -> Tuple[np.ndarray,
                                                                                 float]:
  t0 = time.time()
  out = []
  for i in range(0, len(x), batch_size):
    res = gradient.pgd(logits_fn, x[i:i + batch_size], y[i:i + batch_size],
                       key=jax.random.fold_in(key, i), epsilon=epsilon, norm=norm,
                       num_steps=num_steps, step_size=2.5 * epsilon / num_steps,
                       num_restarts=1, early_stop=False)
    out.append(np.asarray(res.x_adv))
  return np.concatenate(out), time.time() - t0


def _correct(logits_fn, x, y, batch_size) -> np.ndarray:
  return np.argmax(predict(logits_fn, x, batch_size), axis=-1) == y


def compare(models: Mapping[str, LogitsFn], x, y, *, key: jax.Array,
            budgets: Sequence[Tuple[str, float]], pgd_steps: int = 20,
            version: str = "standard", attack_steps: Optional[int] = None,
            square_queries: Optional[int] = None, batch_size: int = 250,
            transfer_to: Optional[str] = None,
            log: Optional[Callable[..., None]] = None) -> List[ProtocolRow]:
  """PGD-`pgd_steps` and AutoAttack on every model at every budget, on the same images.

  Args:
    models: name -> deterministic `x in [0, 1] -> logits`.
    x: float [n, ...] images in [0, 1]; y: int [n] labels.
    key: PRNG key (each model, budget and attack gets its own fold).
    budgets: (norm, epsilon) pairs, norm "linf" or "l2".
    pgd_steps: PGD iterations.
    version: AutoAttack's "standard" or "plus".
    attack_steps, square_queries: AutoAttack's budgets (None: the paper's, 100 and 5,000).
    batch_size: points attacked at once.
    transfer_to: a name of `models`: evaluate the others' adversarials on it.
    log: e.g. `logging.info`, called once per row.

  Returns:
    one `ProtocolRow` per (budget, model), budgets outer.
  """
  if not models:
    raise checks.InvjaxError("models is empty")
  if transfer_to is not None and transfer_to not in models:
    raise checks.InvjaxError(f"transfer_to '{transfer_to}' is not one of {sorted(models)}")
  inputs.check_positive_int(pgd_steps, "pgd_steps")
  inputs.check_positive_int(batch_size, "batch_size")
  x = np.asarray(x, np.float32)
  y = np.asarray(y).astype(np.int32)
  for name, fn in models.items():
    for norm, eps in budgets:
      inputs.validate(fn, x[:1], y[:1], epsilon=eps,
                      choices=(("norm", norm, ("linf", "l2")),))
  target_ok = (None if transfer_to is None
               else _correct(models[transfer_to], x, y, batch_size))

  def transfer_rate(x_adv):
    if target_ok is None or not target_ok.any():
      return None
    fooled = ~_correct(models[transfer_to], x_adv[target_ok], y[target_ok], batch_size)
    return float(np.mean(fooled))

  rows = []
  for b, (norm, eps) in enumerate(budgets):
    kwargs = {k: v for k, v in (("num_steps", attack_steps), ("num_queries", square_queries))
              if v is not None}
    steps = schedule(version, norm, **kwargs)
    for m, (name, fn) in enumerate(models.items()):
      k = jax.random.fold_in(jax.random.fold_in(key, b), m)
      x_pgd, pgd_s = _pgd(fn, x, y, key=jax.random.fold_in(k, 0), norm=norm, epsilon=float(eps),
                          num_steps=int(pgd_steps), batch_size=int(batch_size))
      pgd_robust = float(np.mean(_correct(fn, x_pgd, y, batch_size)))
      report = autoattack(fn, x, y, key=jax.random.fold_in(k, 1), epsilon=float(eps),
                          norm=norm, version=version, steps=steps, batch_size=batch_size)
      counts: Dict[str, int] = {}
      for who in report.broken_by:
        if who is not None:
          counts[who] = counts.get(who, 0) + 1
      other = transfer_to is not None and name != transfer_to
      row = ProtocolRow(
          model=name, norm=norm, epsilon=float(eps), num_examples=len(x),
          clean_accuracy=report.clean_accuracy, pgd_robust_accuracy=pgd_robust,
          autoattack_robust_accuracy=report.robust_accuracy, broken_by=counts,
          pgd_seconds=pgd_s, autoattack_seconds=report.seconds,
          transfer_pgd=transfer_rate(x_pgd) if other else None,
          transfer_autoattack=transfer_rate(report.x_adv) if other else None,
          flags=dict(report.flags))
      if log is not None:
        log("%s %s eps %.4g: clean %.3f, PGD-%d %.3f, AutoAttack %.3f", name, norm, eps,
            row.clean_accuracy, pgd_steps, row.pgd_robust_accuracy,
            row.autoattack_robust_accuracy)
      rows.append(row)
  return rows


def _budget(norm: str, eps: float) -> str:
  return f"L_inf {eps * 255:.3g}/255" if norm == "linf" else f"L2 {eps:g}"


def markdown(rows: Sequence[ProtocolRow], *, pgd_steps: int = 20,
             transfer_to: Optional[str] = None) -> str:
  """The side-by-side table (and the transfer columns when any row has them)."""
  transfer = any(r.transfer_pgd is not None for r in rows)
  head = ["budget", "model", "clean", f"PGD-{pgd_steps} robust", "AutoAttack robust",
          "gap (points)", "broken by"]
  if transfer:
    target = transfer_to or "target"
    head += [f"PGD-{pgd_steps} adv. fool {target}", f"AutoAttack adv. fool {target}"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    broken = ", ".join(f"{k} {v}" for k, v in r.broken_by.items()) or "-"
    cells = [_budget(r.norm, r.epsilon), r.model, f"{r.clean_accuracy:.3f}",
             f"{r.pgd_robust_accuracy:.3f}", f"{r.autoattack_robust_accuracy:.3f}",
             f"{100 * (r.pgd_robust_accuracy - r.autoattack_robust_accuracy):.1f}", broken]
    if transfer:
      cells += ["-" if r.transfer_pgd is None else f"{r.transfer_pgd:.3f}",
                "-" if r.transfer_autoattack is None else f"{r.transfer_autoattack:.3f}"]
    lines.append("| " + " | ".join(cells) + " |")
  flagged = sorted({f"{r.model}: {k}: {v}" for r in rows for k, v in r.flags.items()})
  if flagged:
    lines += ["", "Flags:"] + [f"- {f}" for f in flagged]
  return "\n".join(lines) + "\n"
