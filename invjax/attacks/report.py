"""Tables and figures of an attack suite run: results.md / .json, curves, image grids."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Sequence

import numpy as np

from invjax._src import io


def markdown(rows: Sequence[Dict[str, Any]], epsilons: Sequence[float], norm: str) -> str:
  """Success rate vs epsilon, one row per attack, with median distances and time."""
  head = ["attack"] + [f"eps={e:g}" for e in epsilons] + [
      "unbounded", "median L2", "median Linf", "ms/example"]
  lines = [f"Success rate vs {norm} epsilon", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [r["attack"]] + [f"{r['success'][str(e)]:.2f}" for e in epsilons] + [
        f"{r['success_unbounded']:.2f}", f"{r['median_l2']:.4f}", f"{r['median_linf']:.4f}",
        f"{1e3 * r['seconds_per_example']:.2f}"]
    lines.append("| " + " | ".join(cells) + " |")
  bounded = [r for r in rows if "median_image_l2_bound" in r]
  if bounded:
    lines += ["", f"Image-space cost of the latent attacks (certified encoder constant "
              f"L_e = {bounded[0]['encoder_lipschitz']:.4g}: a latent change dz needs an "
              "image change of at least |dz| / L_e)", "",
              "| attack | median latent L2 | median image L2 bound | median L2 / bound | "
              "below the bound |", "|---|---|---|---|---|"]
    lines += [f"| {r['attack']} | {r['median_latent_l2']:.4f} | "
              f"{r['median_image_l2_bound']:.4f} | {r['median_l2_over_bound']:.2f} | "
              f"{r['below_image_bound']} |" for r in bounded]
  return "\n".join(lines) + "\n"


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_curves(rows, epsilons, norm, path: str) -> None:
  """Attack success rate vs epsilon, one line per attack (PNG)."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for r in rows:
    ax.plot(epsilons, [r["success"][str(e)] for e in epsilons], marker="o", label=r["attack"])
  ax.set_xlabel(f"epsilon ({norm})")
  ax.set_ylabel("attack success rate")
  ax.set_ylim(-0.02, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  io.save_figure(fig, path, dpi=100)


def plot_grid(rows_of_images, titles, path: str, num: int = 8) -> None:
  """One row per entry of `rows_of_images` (each [N, H, W, C] in [0, 1]), `num` columns."""
  plt = _pyplot()
  num = min(num, len(rows_of_images[0]))
  fig, axes = plt.subplots(len(rows_of_images), num, figsize=(1.2 * num, 1.3 * len(titles)),
                           squeeze=False)
  for r, (imgs, title) in enumerate(zip(rows_of_images, titles)):
    for c in range(num):
      ax = axes[r][c]
      ax.imshow(np.clip(np.asarray(imgs[c]), 0, 1))
      ax.set_xticks([])
      ax.set_yticks([])
      if c == 0:
        ax.set_ylabel(title, fontsize=7)
  fig.tight_layout()
  io.save_figure(fig, path, dpi=80)


def text(summary: Dict[str, Any], *, step: int, num_images: int) -> str:
  """The results.md text: a header line, the success table and the invariance line."""
  rows = summary["attacks"]
  table = markdown(rows, summary["epsilons"], summary["norm"]) if rows else ""
  header = (f"Classifier step {step}, clean accuracy {summary['clean_accuracy']:.3f} on "
            f"{num_images} test images; {summary['num_attacked']} correctly classified "
            "images attacked.\n\n")
  if "invariance" in summary:
    inv = summary["invariance"]
    table += (f"\nInvariance attack: metamers keep x1's prediction on "
              f"{inv['same_prediction_as_x1']:.2f} of pairs (max logit change "
              f"{inv['max_logit_change']:.2e}); median L2 to x1 {inv['median_l2_to_x1']:.3f}, "
              f"to x2 {inv['median_l2_to_x2']:.3f}.\n")
  if "information" in summary:
    info = summary["information"]
    table += (f"\nLabel information (nats; H(y) = {info['label_entropy']:.3f}): nuisance latent "
              f"KSG {info['nuisance_ksg']:.3f}, held-out CE bound {info['nuisance_ce_bound']:.3f} "
              f"({info['nuisance_dims']} dims); logits KSG {info['logit_ksg']:.3f}, "
              f"H(y) - CE {info['logit_ce_bound']:.3f}.\n")
  return header + table


def write(result, workdir: str, *, step: int, num_images: int) -> List[str]:
  """Writes results.md, results.json, success_vs_epsilon.png and the image grids of a
  `suite.SuiteResult`; returns the file names (relative to `workdir`)."""
  os.makedirs(workdir, exist_ok=True)
  summary = {"checkpoint_step": step, **result.summary}
  io.write_text(os.path.join(workdir, "results.md"),
                text(result.summary, step=step, num_images=num_images))
  io.write_json(os.path.join(workdir, "results.json"), summary)
  files = ["results.md", "results.json"]
  if summary["attacks"]:
    plot_curves(summary["attacks"], summary["epsilons"], summary["norm"],
                os.path.join(workdir, "success_vs_epsilon.png"))
    files.append("success_vs_epsilon.png")
  for stem, images, titles in result.images:
    plot_grid(images, titles, os.path.join(workdir, f"{stem}.png"))
    files.append(f"{stem}.png")
  return files
