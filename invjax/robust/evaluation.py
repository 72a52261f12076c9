"""Certifying a trained classifier: Lipschitz certificates, randomized smoothing, a soundness
check by attack, one report.

  report = certification_report(model, variables, x, y, key=key, radii=(0.1, 0.25, 0.5),
                                methods=("lipschitz", "smoothing"), input_offset=-0.5)
  files = write_report(report, workdir, curves=report_curves)

* "lipschitz": `invjax.robust.certificates` (deterministic: the certified constant from the
  layers' actual operator norms, radius `margin / (sqrt(2) L)`); needs a certifiable model:
  an invertible classifier over a `lipschitz_resnet` or `iresnet` flow, or a Parseval CNN
  (`invjax.robust.cnn_certificates`).
* "smoothing": `invjax.robust.smoothing.certify` (Cohen et al. 2019: a radius that holds with
  probability `1 - alpha` for the smoothed classifier); any model.
* `attack_examples > 0`: the Lipschitz certificates are checked by attack: PGD-L2
  (`attack_restarts` restarts, `attack_steps` steps) at `attack_fraction` (0.99) of each
  certified radius must never change a certified prediction (`violations` must be 0), and
  at 3x the radius it often does (`broken_at_3x`), which says the radii are not vacuous.
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from invjax._src import checks
from invjax._src import io
from invjax.attacks import gradient
from invjax.nets import parseval_cnn
from invjax.robust import certificates
from invjax.robust import cnn_certificates
from invjax.robust import smoothing

METHODS = ("lipschitz", "smoothing")
JSON_FILE, TABLE_FILE, CURVE_FILE = "certification.json", "certification.md", "certified_curve.png"


def _attack_check(logits_fn, x, y, radius, *, key, fraction, steps, restarts) -> Dict[str, Any]:
  """PGD-L2 at `fraction` and at 3x of each certified radius (per-example budgets)."""
  out = {}
  for name, scale in (("at_fraction", fraction), ("at_3x", 3.0)):
    res = gradient.pgd(logits_fn, x, y, key=jax.random.fold_in(key, int(scale * 100)),
                       epsilon=radius * scale, norm="l2", num_steps=steps,
                       step_size=2.5 * radius * scale / steps, num_restarts=restarts)
    out[name] = int(np.sum(np.asarray(res.success)))
  return {"examples": int(len(x)), "fraction": float(fraction), "steps": int(steps),
          "restarts": int(restarts), "violations": out["at_fraction"],
          "broken_at_3x": out["at_3x"]}


def lipschitz_bound(model, variables, image_shape: Sequence[int]) -> Dict[str, Any]:
  """The certified l2 constant of `x -> logits` and its parts, for a certifiable model.

  An `InvertibleClassifier` over a `lipschitz_resnet` / `iresnet` flow
  (`certificates.certified_lipschitz`) or a `ParsevalCNN`
  (`cnn_certificates.parseval_cnn_lipschitz`); other models raise `InvjaxError` (certify
  them with `methods=("smoothing",)`).
  """
  if certificates.certifiable(model):  # the bound only: no per-layer lower bounds
    b = certificates.certified_lipschitz(model, variables, power_iterations=0)
    return {"lipschitz": b.lipschitz, "nominal_lipschitz": b.nominal,
            "encoder_lipschitz": b.encoder, "decoder_lipschitz": b.decoder,
            "head_norm": b.head}
  if isinstance(model, parseval_cnn.ParsevalCNN):
    b = cnn_certificates.parseval_cnn_lipschitz(model, variables, image_shape)
    return {"lipschitz": b.lipschitz, "nominal_lipschitz": b.nominal,
            "block_lipschitz": list(b.blocks), "head_norm": b.head}
  raise checks.InvjaxError(
      f"no Lipschitz certificate for a {type(model).__name__}: the certifiable models are "
      "InvertibleClassifiers over lipschitz_resnet / iresnet flows and ParsevalCNNs; use "
      "methods=('smoothing',)")


def _logits_fn(model, variables, input_offset: float = 0.0):
  """The jitted `x -> logits` of a classifier whose `apply` returns logits or `(logits, ...)`
  (any classifier, CNNs included: `invertibility.logits_function` is the invertible one's)."""
  def logits_fn(v):
    out = model.apply(variables, v + input_offset)
    return out[0] if isinstance(out, tuple) else out
  return jax.jit(logits_fn)


def certification_report(model, variables, x, y, *, key: jax.Array, radii: Sequence[float],
                         methods: Sequence[str] = ("lipschitz",), input_offset: float = 0.0,
                         sigma: float = 0.25, num_selection: int = 100,
                         num_samples: int = 100_000, alpha: float = 0.001,
                         batch_size: int = 1000, attack_examples: int = 0,
                         attack_fraction: float = 0.99, attack_steps: int = 50,
                         attack_restarts: int = 5) -> Tuple[Dict[str, Any], Dict[str, Tuple]]:
  """Certified accuracies of `model` on (x, y) at `radii` by each of `methods`.

  Args:
    model, variables: a classifier, `model.apply(variables, v)` its logits (or a tuple
      whose first element they are: an `InvertibleClassifier`); "lipschitz" needs a
      certifiable one (`lipschitz_bound`).
    x: float [N, H, W, C] images in [0, 1]; the model sees `x + input_offset`; y: int [N].
    key: PRNG key (smoothing noise, the attack check).
    radii: l2 radii at which certified accuracy is reported (>= 0).
    methods: a subset of `METHODS`.
    input_offset: added to the images before the model.
    sigma, num_selection, num_samples, alpha, batch_size: randomized smoothing's (`smoothing.
      certify`; `batch_size` noisy images per forward pass).
    attack_examples: Lipschitz-certified examples checked by attack (0: none).
    attack_fraction, attack_steps, attack_restarts: the check's budget (module docstring).

  Returns:
    (report, curves): a JSON-able dict `{"num_examples", "radii", "clean_accuracy",
    "methods": {name: {...}}}`, and label -> (radius [N], correct [N]) for
    `certificates.plot_certified_curve`.
  """
  methods = tuple(methods)
  for m in methods:
    if m not in METHODS:
      raise checks.InvjaxError(f"methods must be a subset of {METHODS}, got '{m}'")
  if not methods:
    raise checks.InvjaxError("methods is empty")
  radii = tuple(float(r) for r in radii)
  x = np.asarray(x, np.float32)
  y = np.asarray(y).astype(np.int32)
  logits_fn = _logits_fn(model, variables, input_offset)
  logits = np.concatenate([np.asarray(logits_fn(x[i:i + batch_size]))
                           for i in range(0, len(x), batch_size)])
  report: Dict[str, Any] = {"num_examples": int(len(x)), "radii": list(radii),
                            "clean_accuracy": float(np.mean(np.argmax(logits, -1) == y)),
                            "methods": {}}
  curves: Dict[str, Tuple] = {}
  if "lipschitz" in methods:
    t0 = time.time()
    bound = lipschitz_bound(model, variables, x.shape[1:])
    cert = certificates.certify_logits(logits, y, radii, lipschitz=bound["lipschitz"])
    entry = {"certified_accuracy": cert.certified_accuracy.tolist(), **bound,
             "median_radius": float(np.median(cert.radius)), "seconds": 0.0}
    if attack_examples:
      idx = np.where(cert.radius > 0)[0][:int(attack_examples)]
      if len(idx):
        entry["attack_check"] = _attack_check(
            logits_fn, x[idx], y[idx], cert.radius[idx].astype(np.float32),
            key=jax.random.fold_in(key, 1), fraction=attack_fraction, steps=attack_steps,
            restarts=attack_restarts)
    entry["seconds"] = time.time() - t0
    report["methods"]["lipschitz"] = entry
    curves[f"Lipschitz (L = {bound['lipschitz']:.3g})"] = (cert.radius, cert.correct)
  if "smoothing" in methods:
    t0 = time.time()
    sm = smoothing.certify(logits_fn, x, key=jax.random.fold_in(key, 2), sigma=sigma,
                           num_selection=num_selection, num_samples=num_samples, alpha=alpha,
                           batch_size=batch_size)
    correct = (sm.prediction == y)
    report["methods"]["smoothing"] = {
        "certified_accuracy": smoothing.certified_accuracy(sm, y, radii).tolist(),
        "sigma": float(sigma), "num_samples": int(num_samples), "alpha": float(alpha),
        "abstained": float(np.mean(sm.prediction == smoothing.ABSTAIN)),
        "smoothed_accuracy": float(np.mean(correct)),
        "median_radius": float(np.median(sm.radius)), "seconds": time.time() - t0}
    curves[f"smoothing (sigma = {sigma:g})"] = (sm.radius, correct)
  return report, curves


def _note(name: str, m: Mapping[str, Any]) -> str:
  if name == "lipschitz":
    note = f"L = {m['lipschitz']:.4g} (nominal {m['nominal_lipschitz']:.4g})"
    chk = m.get("attack_check")
    if chk:
      note += (f"; PGD-L2 at {chk['fraction']:g}x radius: {chk['violations']} of "
               f"{chk['examples']} changed, at 3x: {chk['broken_at_3x']}")
    return note
  return (f"sigma {m['sigma']:g}, N {m['num_samples']}, alpha {m['alpha']:g}, "
          f"abstained {m['abstained']:.3f}")


def markdown(report: Mapping[str, Any]) -> str:
  """The certified-accuracy table: one row per method (per model), one column per radius.

  `report` is a `certification_report` or `{"num_examples", "radii", "models": {name:
  certification_report}}` (several models certified on the same images).
  """
  radii = report["radii"]
  models = report.get("models")
  if models is None:
    lines = [f"{report['num_examples']} test images, clean accuracy "
             f"{report['clean_accuracy']:.3f}", ""]
    rows = [(None, report)]
  else:
    lines = [f"{report['num_examples']} test images", ""]
    rows = list(models.items())
  head = "| model | clean | method | " if models is not None else "| method | "
  lines += [head + " | ".join(f"r = {r:.3g}" for r in radii) + " | notes |",
            "|---|" + "---|" * (len(radii) + (3 if models is not None else 1))]
  for model_name, rep in rows:
    for name, m in rep["methods"].items():
      cells = [model_name, f"{rep['clean_accuracy']:.3f}", name] if model_name else [name]
      cells += [f"{a:.3f}" for a in m["certified_accuracy"]] + [_note(name, m)]
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_report(report: Mapping[str, Any], workdir: str, *,
                 curves: Optional[Mapping[str, Tuple]] = None) -> List[str]:
  """certification.json, certification.md and (with `curves`) certified_curve.png."""
  io.write_json(os.path.join(workdir, JSON_FILE), dict(report))
  io.write_text(os.path.join(workdir, TABLE_FILE), markdown(report))
  files = [JSON_FILE, TABLE_FILE]
  if curves:
    certificates.plot_certified_curve(os.path.join(workdir, CURVE_FILE), curves,
                                      marks=report["radii"])
    files.append(CURVE_FILE)
  return files
