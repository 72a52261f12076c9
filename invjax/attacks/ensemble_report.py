"""The report of `invjax.attacks.autoattack` (`invjax.attacks.ensemble`): what each attack
did, the per-example outcome, and their summaries.

  AttackStats: one attack's counts (points attacked and broken, evaluations, time, successes
    not confirmed or beyond the budget);
  AutoAttackReport: one budget's outcome (clean and robust accuracy, `broken_by` and `x_adv`
    per point, the attacks' stats, the sanity flags), `to_json`;
  markdown_table: one row per budget, the robust accuracy after each attack;
  robustness_json: a RobustBench-style summary of one norm's budgets (`launch/evaluate.py`
    writes it as `robustness.json`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from invjax._src import checks


@dataclasses.dataclass(frozen=True)
class AttackStats:
  """What one attack of the ensemble did (counts over the points it attacked)."""
  name: str
  num_attacked: int
  num_broken: int
  robust_accuracy_after: float
  grad_evals: int
  forward_evals: int
  seconds: float
  num_unconfirmed: int = 0  # reported successes that re-evaluation rejects
  num_outside_budget: int = 0  # minimal-norm attacks: successes beyond epsilon


@dataclasses.dataclass(frozen=True)
class AutoAttackReport:
  """The outcome of `autoattack` on a batch.

  `broken_by[i]`: None (robust), "clean" (misclassified without attack) or the name of the
  first attack that broke point i; `x_adv[i]` is its adversarial (x[i] when robust or clean).
  `flags`: sanity flag name -> message (`invjax.attacks.ensemble`'s docstring).
  """
  norm: str
  epsilon: float
  version: str
  num_examples: int
  clean_accuracy: float
  robust_accuracy: float
  broken_by: Tuple[Optional[str], ...]
  x_adv: np.ndarray
  attacks: Tuple[AttackStats, ...]
  flags: Dict[str, str]
  seconds: float

  def to_json(self, per_example: bool = True) -> Dict[str, Any]:
    """JSON-able dict (no images); `per_example`: also `broken_by` per point."""
    out = {k: getattr(self, k) for k in ("norm", "epsilon", "version", "num_examples",
                                          "clean_accuracy", "robust_accuracy", "seconds")}
    out["attacks"] = [dataclasses.asdict(a) for a in self.attacks]
    out["flags"] = dict(self.flags)
    if per_example:
      out["broken_by"] = list(self.broken_by)
    return out


def markdown_table(reports: Sequence[AutoAttackReport]) -> str:
  """One row per report (budget): clean and robust accuracy, robust accuracy after each
  attack, the flags."""
  names = list(dict.fromkeys(a.name for r in reports for a in r.attacks))
  lines = ["| norm | epsilon | clean | robust | " + " | ".join(names) + " | flags |",
           "|---|---|---|---|" + "---|" * len(names) + "---|"]
  for r in reports:
    after = {a.name: f"{a.robust_accuracy_after:.1%}" for a in r.attacks}
    lines.append(f"| {r.norm} | {r.epsilon:.4g} | {r.clean_accuracy:.1%} | "
                 f"{r.robust_accuracy:.1%} | " + " | ".join(after.get(k, "") for k in names)
                 + f" | {', '.join(sorted(r.flags)) or '-'} |")
  return "\n".join(lines) + "\n"


def robustness_json(reports: Sequence[AutoAttackReport], **metadata: Any) -> Dict[str, Any]:
  """A RobustBench-style summary of one norm's reports (one per epsilon): `metadata` (model,
  dataset, ...), the threat model, clean and AutoAttack accuracy at the first epsilon, the
  union of the flags (`unreliable` when any), and every report's `to_json` (no per-point list)."""
  if not reports:
    raise checks.InvjaxError("robustness_json needs at least one report")
  first = reports[0]
  flags = sorted({name for r in reports for name in r.flags})
  return {**metadata, "threat_model": {"linf": "Linf", "l2": "L2"}[first.norm],
          "norm": first.norm, "version": first.version, "num_examples": first.num_examples,
          "eps": first.epsilon, "clean_acc": first.clean_accuracy,
          "autoattack_acc": first.robust_accuracy, "flags": flags, "unreliable": bool(flags),
          "evaluations": [r.to_json(per_example=False) for r in reports]}
