"""Do attacks crafted on a distilled invertible student transfer to its teacher? The table.

For each (norm, epsilon) budget, on test images the teacher classifies correctly, the success
rate *on the teacher* of
  (i)   PGD on the teacher (white-box upper bound),
  (ii)  PGD on the student, adversarials evaluated on the teacher (transfer),
  (iii) the latent-inversion attack on the student, evaluated on the teacher, one row per
        logit margin `kappa` and per decode step ("exact" / "linear"), and one without the
        epsilon ball when asked,
with the white-box success on the attacked model and median distances; plus the cosine
between student and teacher input gradients on those images and (optionally) the student's
local Lipschitz constants in both directions. `markdown` renders one run,
`comparison_markdown` / `compare_runs` put finished runs side by side.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from invjax import parallel
from invjax._src import io
from invjax.attacks import gradient
from invjax.attacks import latent as latent_lib
from invjax.attacks import protocol
from invjax.distill import core
from invjax.robust import lipschitz

LogitsFn = Callable[[jax.Array], jax.Array]


def batched_numpy(fn: LogitsFn, x: np.ndarray, batch_size: int) -> np.ndarray:
  """`fn` over `x` in chunks of `batch_size`, as one numpy array."""
  return np.concatenate([np.asarray(fn(jnp.asarray(x[i:i + batch_size])))
                         for i in range(0, len(x), batch_size)])


class TransferTable(NamedTuple):
  """rows: one dict per (budget, attack); num_attacked: images attacked; lipschitz: median
  local Lipschitz lower bounds of the student ("encode", "decode"; {} when not asked);
  cosine: median / mean student-teacher input-gradient cosine."""
  rows: List[Dict[str, Any]]
  num_attacked: int
  lipschitz: Dict[str, float]
  cosine: Dict[str, float]


def _row(name: str, results: List[Any], teacher_fn, y, seconds: float) -> Dict[str, Any]:
  """Success on the attacked model (white-box) and on the teacher, median distances."""
  x_adv = np.concatenate([np.asarray(r.x_adv) for r in results])
  white = np.concatenate([np.asarray(r.success) for r in results])
  on_teacher = batched_numpy(teacher_fn, x_adv, 256).argmax(1) != y
  l2 = np.concatenate([np.asarray(r.l2) for r in results])
  linf = np.concatenate([np.asarray(r.linf) for r in results])
  return {"attack": name, "success_on_attacked": float(white.mean()),
          "success_on_teacher": float(on_teacher.mean()),
          "median_l2": float(np.median(l2)), "median_linf_255": float(np.median(linf) * 255),
          "seconds": seconds}


def transfer_table(teacher_fn: LogitsFn, student_model, student_vars, student_fn: LogitsFn,
                   x_test: np.ndarray, y_test: np.ndarray, *, norms: Sequence[str],
                   epsilons: Sequence[float], num_examples: int = 1000, batch_size: int = 250,
                   pgd_steps: int = 20, latent_method: str = "jacobian",
                   latent_kappa: Sequence[float] | float = (0.0,),
                   latent_decode_step: Sequence[str] | str = ("exact",),
                   latent_unconstrained: bool = False, latent_candidates: Optional[int] = None,
                   lipschitz_examples: int = 0, input_offset: float = 0.0,
                   seed: int = 0) -> TransferTable:
  """The (i)/(ii)/(iii) rows (module docstring) for every (norm, epsilon) pair.

  Args:
    teacher_fn, student_fn: `x in [0, 1] -> logits`.
    student_model, student_vars: the `InvertibleClassifier` behind `student_fn`, which sees
      `x - input_offset`.
    x_test, y_test: float test images in [0, 1] and labels.
    norms, epsilons: the budgets, paired.
    num_examples: attack the first that many test images the teacher gets right.
    batch_size: attack batch (split over the local devices).
    pgd_steps: PGD iterations (step 2.5 * epsilon / steps, one restart).
    latent_method: method of `invjax.attacks.latent_attack`.
    latent_kappa: logit margin(s) of the latent attack: a row each.
    latent_decode_step: "exact" and/or "linear": a row each.
    latent_unconstrained: also one latent row without the epsilon ball per decode step.
    latent_candidates: classes per Jacobian-aware step (None or 0: all).
    lipschitz_examples: images at which the student's local Lipschitz constants are
      measured (0: skip).
    input_offset: see `student_model`.
    seed: the attacks' PRNG seed.
  """
  x_all, y_all = np.asarray(x_test), np.asarray(y_test)
  pred = batched_numpy(teacher_fn, x_all, 256).argmax(1)
  keep = np.where(pred == y_all)[0][:num_examples]
  x, y = x_all[keep], y_all[keep]
  bs = batch_size
  encode = lambda v: student_model.apply(student_vars, v - input_offset, method="encode")
  decode = lambda z: student_model.apply(student_vars, z, method="decode") + input_offset
  head = student_model.apply(student_vars, method="linear_head")
  if jax.local_device_count() > 1:  # an argument of the attacks next to the split batch
    head = parallel.replicate(head, parallel.local_data_mesh())
  rows = []
  key = jax.random.PRNGKey(seed)
  # One (iii) row per latent margin: kappa > 0 lands past the student's boundary, which
  # is what lets an adversarial example transfer to the teacher.
  kappas = tuple(np.atleast_1d(latent_kappa).astype(float))
  # "exact" decodes the latent target, "linear" takes its first-order image (a row each).
  decode_steps = tuple(np.atleast_1d(latent_decode_step))

  def run(name, attack):
    t0 = time.time()
    results = []
    for i in range(0, len(x), bs):
      k = jax.random.fold_in(key, i)  # the batch split over the local devices (if several)
      res = parallel.call_sharded(lambda xb, yb: attack(xb, yb, k), x[i:i + bs], y[i:i + bs])
      jax.block_until_ready(res.x_adv)
      results.append(res)
    return _row(name, results, teacher_fn, y, time.time() - t0)

  for norm, eps in zip(norms, epsilons):
    pgd_kw = dict(epsilon=eps, norm=norm, num_steps=pgd_steps, step_size=2.5 * eps / pgd_steps,
                  num_restarts=1)
    tag = f"{norm} eps={eps * 255:.1f}/255" if norm == "linf" else f"{norm} eps={eps:g}"
    rows.append({"budget": tag, **run("(i) PGD on teacher", lambda xb, yb, k: gradient.pgd(
        teacher_fn, xb, yb, key=k, early_stop=True, **pgd_kw))})
    rows.append({"budget": tag, **run("(ii) PGD on student -> teacher", lambda xb, yb, k: gradient.pgd(
        student_fn, xb, yb, key=k, early_stop=False, **pgd_kw))})
    budgets = []
    for step in decode_steps:
      budgets += [(kappa, eps, step) for kappa in kappas]
      if latent_unconstrained:  # where the step lands without a projection
        budgets.append((kappas[0], None, step))
    for kappa, ball, step in budgets:
      name = (f"(iii) latent ({latent_method}, kappa={kappa:g}"
              + (", linear decode" if step == "linear" else "")
              + ("" if ball else ", no epsilon") + ") on student -> teacher")
      rows.append({"budget": tag, **run(
          name, lambda xb, yb, k, kappa=kappa, ball=ball, step=step: latent_lib.latent_attack(
              encode, decode, head, xb, yb, key=k, method=latent_method, epsilon=ball,
              norm=norm, kappa=kappa, num_candidates=latent_candidates or None,
              decode_step=step))})
  # How far the student's attack directions point the teacher's way: the cosine of the
  # two models' input gradients of log p(true class) on the attacked images.
  cosine = core.gradient_cosine(teacher_fn, student_fn, x, y, batch_size=bs)
  cosine = {"median": float(np.median(cosine)), "mean": float(np.mean(cosine))}
  lip = {}
  if lipschitz_examples:
    # Local Lipschitz lower bounds (power iteration on J^T J) of the student's bijection
    # in both directions at the first attacked images: how much a latent step can move
    # the image (decode), and an image step the latent (encode).
    xs = jnp.asarray(x[:lipschitz_examples])
    lip = {name: float(np.median(np.asarray(lipschitz.local_lipschitz(
        fn, pts, key=jax.random.fold_in(key, j), num_iters=20))))
           for j, (name, fn, pts) in enumerate((("encode", encode, xs),
                                                ("decode", decode, encode(xs))))}
  return TransferTable(rows, len(keep), lip, cosine)


def markdown(results: Dict[str, Any]) -> str:
  """One run's `transfer.md`: accuracies, agreement, cosine, Lipschitz, then the table."""
  lines = [f"teacher accuracy {results['teacher_accuracy']:.4f} | student accuracy "
           f"{results['student_accuracy']:.4f} | agreement {results['agreement']:.4f} | "
           f"{results['num_attacked']} attacked images"]
  cosine = results.get("input_gradient_cosine")
  if cosine:
    lines[0] += (" | input-gradient cosine student/teacher (log p(y), median / mean) "
                 f"{cosine['median']:.3f} / {cosine['mean']:.3f}")
  lip = results.get("student_local_lipschitz") or {}
  if lip:
    lines[0] += (" | student local Lipschitz (median, lower bounds): encode "
                 f"{lip['encode']:.3g}, decode {lip['decode']:.3g}")
  lines += ["",
            "| budget | attack | success on attacked model | success on teacher | median L2 | "
            "median Linf (/255) | time (s) |", "|---|---|---|---|---|---|---|"]
  for r in results["transfer"]:
    lines.append(f"| {r['budget']} | {r['attack']} | {r['success_on_attacked']:.3f} | "
                 f"{r['success_on_teacher']:.3f} | {r['median_l2']:.3f} | "
                 f"{r['median_linf_255']:.2f} | {r['seconds']:.1f} |")
  aa = results.get("autoattack")
  if aa:
    lines += ["", f"PGD-{aa['pgd_steps']} vs AutoAttack on the first {aa['num_examples']} test "
              "images (robust accuracy; the student's adversarials evaluated on the teacher: "
              "the fraction of the points the teacher gets right that they fool):", "",
              protocol.markdown([protocol.ProtocolRow(**r) for r in aa["rows"]],
                                pgd_steps=aa["pgd_steps"], transfer_to="teacher").rstrip()]
  return "\n".join(lines) + "\n"


def comparison_markdown(runs: Sequence[Tuple[str, Dict[str, Any]]]) -> str:
  """Finished runs side by side: one column per run, success on the teacher per attack
  (and, in parentheses, on the model it was crafted on).

  Args:
    runs: (name, results dict) pairs. Attacks are matched by budget and name, in the order
      they first appear; a run without one gets "-" there.
  """
  if not runs:
    raise ValueError("comparison_markdown needs at least one (name, results) pair")

  def row(label, fn):
    return f"| {label} | " + " | ".join(fn(r) for _, r in runs) + " |"

  lines = ["| | " + " | ".join(name for name, _ in runs) + " |", "|---" * (len(runs) + 1) + "|"]
  for key in ("teacher_accuracy", "student_accuracy", "agreement"):
    lines.append(row(key.replace("_", " "), lambda r, key=key: f"{r[key]:.4f}"))
  lines.append(row("input-gradient cosine (median)", lambda r: (
      f"{r['input_gradient_cosine']['median']:.3f}" if r.get("input_gradient_cosine") else "-")))
  lines.append("| **success on the teacher (on the attacked model)** |" + " |" * len(runs))
  order = []
  for _, r in runs:
    for t in r["transfer"]:
      if (t["budget"], t["attack"]) not in order:
        order.append((t["budget"], t["attack"]))
  for budget, attack in order:
    def cell(r, budget=budget, attack=attack):
      found = [t for t in r["transfer"] if (t["budget"], t["attack"]) == (budget, attack)]
      if not found:
        return "-"
      return f"{found[0]['success_on_teacher']:.3f} ({found[0]['success_on_attacked']:.2f})"
    lines.append(row(f"{budget}: {attack}", cell))
  return "\n".join(lines) + "\n"


def compare_runs(spec: str, workdir: str) -> str:
  """`name=dir,...`: reads each dir's results.json, writes and returns `comparison.md`."""
  runs = []
  for item in spec.split(","):
    name, sep, run_dir = item.partition("=")
    if not sep or not name or not run_dir:
      raise ValueError(f"--compare wants name=dir pairs separated by commas, got {item!r}")
    path = os.path.join(run_dir, "results.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"--compare: {path} does not exist (is the run {name!r} finished?)")
    with open(path) as f:
      runs.append((name, json.load(f)))
  table = comparison_markdown(runs)
  io.write_text(os.path.join(workdir, "comparison.md"), table)
  return table
