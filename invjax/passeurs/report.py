"""What the passeurs experiment writes: the results table, its plots, the poisoned sets, the audit.

`write_artifacts(result, workdir)` writes an `experiment.ExperimentResult` as results.md /
results.json (the table of `results_markdown`), accuracy_vs_steps.png (`plot_accuracy`),
examples_<method>.png (`plot_examples`) and poisoned_train_<method>_k<k>.npz; `write_audit`
writes the audit reports as audit.md / audit.json. Every file is written atomically
(`invjax._src.io`, `invjax.data.save_npz`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List

import numpy as np

from invjax import data as data_lib
from invjax._src import io


def results_markdown(rows: List[Dict[str, Any]]) -> str:
  """The results table as GitHub markdown."""
  lines = ["| method | steps | public acc | private acc | L_inf (/255) | mean abs delta | seconds |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['method']} | {r['steps']} | {100 * r['public_acc']:.2f}% | "
                 f"{100 * r['private_acc']:.2f}% | {r['linf']} | {r['mean_abs_delta']:.3f} | "
                 f"{r['seconds']:.1f} |")
  return "\n".join(lines) + "\n"


def plot_accuracy(rows: List[Dict[str, Any]], path: str) -> None:
  """Public and private accuracy vs number of steps, one line pair per method (PNG)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  clean = [r for r in rows if r["method"] == "clean"][0]
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for method, color in (("sign", "C0"), ("rotation", "C1")):
    rs = [clean] + [r for r in rows if r["method"] == method]
    if len(rs) == 1:
      continue
    ks = [r["steps"] for r in rs]
    ax.plot(ks, [100 * r["public_acc"] for r in rs], "o-", color=color, label=f"{method}: public")
    ax.plot(ks, [100 * r["private_acc"] for r in rs], "s--", color=color,
            label=f"{method}: private")
  ax.set_xlabel("poisoning steps k (L_inf <= k/255)")
  ax.set_ylabel("test accuracy (%)")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  io.save_figure(fig, path, dpi=120)


def plot_examples(clean: np.ndarray, poisoned: np.ndarray, path: str, *, n: int = 8) -> None:
  """Grid: clean / poisoned / difference amplified (x 127 / L_inf, centred at grey) (PNG)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  n = min(n, len(clean))
  d = poisoned[:n].astype(np.int16) - clean[:n].astype(np.int16)
  scale = 127.0 / max(1, int(np.abs(d).max()))
  amp = np.clip(128 + d * scale, 0, 255).astype(np.uint8)
  fig, axes = plt.subplots(3, n, figsize=(1.2 * n, 3.8))
  axes = np.asarray(axes).reshape(3, n)
  for i in range(n):
    for r, img in enumerate((clean[i], poisoned[i], amp[i])):
      axes[r, i].imshow(img, interpolation="nearest")
      axes[r, i].axis("off")
  for r, name in enumerate(("clean", "poisoned", "diff (amplified)")):
    axes[r, 0].set_title(name, fontsize=7, loc="left")
  fig.tight_layout()
  io.save_figure(fig, path, dpi=120)


def write_artifacts(result, workdir: str) -> Dict[str, str]:
  """Writes an `experiment.ExperimentResult` as results.md/json, accuracy_vs_steps.png,
  examples_<method>.png and poisoned_train_<method>_k<k>.npz (uint8 `x`, `y`, official
  `index`) into `workdir`.

  Returns a mapping artefact name -> path.
  """
  os.makedirs(workdir, exist_ok=True)
  paths = {"results_md": os.path.join(workdir, "results.md"),
           "results_json": os.path.join(workdir, "results.json"),
           "plot": os.path.join(workdir, "accuracy_vs_steps.png")}
  io.write_text(paths["results_md"], results_markdown(result.rows))
  io.write_text(paths["results_json"],
                json.dumps({"rows": result.rows, "config": result.config}, indent=2, default=str))
  plot_accuracy(result.rows, paths["plot"])
  for method, by_k in result.poisoned.items():
    kmax = max(by_k)
    p = os.path.join(workdir, f"examples_{method}.png")
    plot_examples(result.train.x, by_k[kmax].x, p)
    paths[f"examples_{method}"] = p
    for k, ds in by_k.items():
      p = os.path.join(workdir, f"poisoned_train_{method}_k{k}.npz")
      data_lib.save_npz(p, ds)
      paths[f"poisoned_{method}_k{k}"] = p
  return paths


def write_audit(reports: Dict[str, Any], workdir: str) -> str:
  """Writes audit.md (summaries) and audit.json of `AuditReport`s (name -> report, as
  `experiment.audit_result` returns) into `workdir`; returns the markdown path."""
  os.makedirs(workdir, exist_ok=True)
  md = "\n\n".join(f"### {name}\n```\n{r.summary()}\n```" for name, r in reports.items())
  path = os.path.join(workdir, "audit.md")
  io.write_text(path, md + "\n")
  io.write_text(os.path.join(workdir, "audit.json"), json.dumps(
      {n: dataclasses.asdict(r) for n, r in reports.items()}, indent=2))
  return path
