"""One call for both diagnostics of a hybrid invertible classifier: invertibility and detection.

`diagnostics_report` runs, on the same N test images,

* `invjax.robust.invertibility.invertibility_report` on the test images, their PGD
  adversarial images (`pgd_examples`, all N) and out-of-distribution inputs (uniform noise,
  constant images, tfds sets when prepared; a missing one is skipped with its reason), and
* `invjax.robust.detection.detection_report`: the bits/dim detector against clean, PGD,
  latent-attack and adaptive images (attacks on the correctly classified images),

and returns one JSON-able dict (NaN written as None) and one markdown document with both
tables. `write_report` writes them as `diagnostics.json` / `diagnostics.md`.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np

from invjax._src import checks
from invjax._src import io
from invjax.robust import detection
from invjax.robust import invertibility

Array = jax.Array
JSON_FILE, TABLE_FILE = "diagnostics.json", "diagnostics.md"


def _clean(obj):
  """NaN / inf floats -> None (strict JSON), recursively."""
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  if isinstance(obj, dict):
    return {k: _clean(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_clean(v) for v in obj]
  return obj


def diagnostics_report(model: Any, variables: Any, x: Array, y: Array, *, key: Array,
                       epsilon: float = 8 / 255, norm: str = "linf", num_steps: int = 10,
                       ood: Sequence[str] = invertibility.DEFAULT_OOD,
                       tfds_data_dir: Optional[str] = None,
                       adaptive_lambdas: Sequence[float] = (1.0, 10.0),
                       latent_method: str = "jacobian", input_offset: float = 0.0,
                       num_iters: int = 20, batch_size: int = 32, fpr: float = 0.05,
                       only_correct: bool = True) -> Tuple[Dict[str, Any], str]:
  """Invertibility and detection diagnostics of `model` on the images `x` (module doc).

  Args:
    model, variables: a hybrid invertible classifier (`apply -> (logits, z, log_det)`,
      `encode` / `decode` / `logits`, e.g. `invjax.flows.InvertibleClassifier` over Glow).
    x: float [N, ...] test images in [0, 1]; y: int [N] labels.
    key: PRNG key.
    epsilon, norm, num_steps: the budget and steps of every attack (PGD for the
      invertibility "pgd" set; PGD, latent and adaptive for detection).
    ood: out-of-distribution kinds (`invertibility.load_ood_images`), N of each.
    tfds_data_dir: tensorflow-datasets directory of the tfds OOD kinds (None: tfds' default).
    adaptive_lambdas, latent_method, fpr, only_correct: as in `detection.detection_report`.
    input_offset: the model sees `x + input_offset`.
    num_iters, batch_size: as in `invertibility.invertibility_report`.

  Returns:
    `(report, markdown)`: a dict of Python numbers / strings / lists (`invertibility`:
    a summary per set, thresholds, skipped sets; `detection`: a summary per row, the
    threshold; `clean_accuracy`, `num_examples`, the attack settings) and both tables.
  """
  checks.check_rank(x, (4,), "x")
  if np.shape(y) != np.shape(x)[:1]:
    raise checks.InvjaxError(f"y must have shape {np.shape(x)[:1]}, got {np.shape(y)}")
  k_pgd, k_inv, k_det = jax.random.split(key, 3)
  pgd = invertibility.pgd_examples(model, variables, x, y, key=k_pgd, epsilon=epsilon,
                                   num_steps=num_steps, norm=norm, input_offset=input_offset,
                                   early_stop=False)
  inv = invertibility.invertibility_report(
      model, variables, x, key=k_inv, adversarial={"pgd": pgd.x_adv}, ood=tuple(ood),
      input_offset=input_offset, num_iters=num_iters, batch_size=batch_size,
      data_dir=tfds_data_dir)
  det = detection.detection_report(
      model, variables, x, y, key=k_det, epsilon=epsilon, norm=norm, num_steps=num_steps,
      adaptive_lambdas=tuple(adaptive_lambdas), latent_method=latent_method,
      input_offset=input_offset, fpr=fpr, only_correct=only_correct)
  n = int(np.shape(x)[0])
  clean_accuracy = 1.0 - float(np.mean(det.get("clean").success))
  report = {
      "num_examples": n, "clean_accuracy": clean_accuracy, "epsilon": float(epsilon),
      "norm": norm, "num_steps": int(num_steps),
      "invertibility": {"sets": list(inv.summary()),
                        "reconstruction_tol": inv.reconstruction_tol,
                        "inverse_lipschitz_max": inv.inverse_lipschitz_max,
                        "skipped": {name: why for name, why in inv.skipped}},
      "detection": {"rows": list(det.summary()), "threshold_bits_per_dim": det.threshold,
                    "fpr": det.fpr, "num_attacked": int(np.sum(det.attacked)),
                    "only_correct": det.only_correct,
                    "adaptive_lambdas": [float(v) for v in adaptive_lambdas],
                    "latent_method": latent_method}}
  md = "\n".join([
      f"{n} test images, clean accuracy {100 * clean_accuracy:.1f}%; attacks: {norm} "
      f"epsilon {float(epsilon):.4g}, {int(num_steps)} steps.", "",
      "## Invertibility (reconstruction error, local Lipschitz lower bounds)", "",
      inv.markdown(), "", "## Likelihood detection (bits/dim)", "", det.markdown(), ""])
  return _clean(report), md


def write_report(report: Dict[str, Any], markdown: str, workdir: str) -> List[str]:
  """`diagnostics.json` and `diagnostics.md` in `workdir` (process 0 writes); their names."""
  os.makedirs(workdir, exist_ok=True)
  io.write_json(os.path.join(workdir, JSON_FILE), report)
  io.write_text(os.path.join(workdir, TABLE_FILE), markdown)
  return [JSON_FILE, TABLE_FILE]
