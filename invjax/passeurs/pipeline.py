"""The evaluated pipeline (frozen CNN features -> linear SVM) and the passeurs experiment loop.

The pipeline a buyer evaluates: embed images with a frozen ImageNet CNN (EfficientNet-Lite0,
`invjax.nets.efficientnet`), fit a LIBLINEAR-style linear SVM (`invjax.passeurs.svm.fit`:
squared hinge, C=1, one-vs-rest, no bias) on the training features, and report accuracy on
the *public* and *private* halves of the test set. The split is fixed and documented: by
official test index, 0-4999 public, 5000-9999 private (`invjax.data.public_private_split`);
the embedded mini test set holds 250 + 250 images by the same rule.

`run_experiment(config)` runs the whole story: clean pipeline, then k = 1..steps poisoning
steps (`invjax.passeurs.poison`) of the training images toward the SVM fitted on the public
test features, re-embedding and re-fitting after every step; it returns the results table
(public acc, private acc, L_inf in grey levels, mean |delta|, seconds). `write_artifacts`
writes that table (markdown + json), a plot, an image grid and the poisoned training sets.

A feature extractor is an `Extractor(apply, params, name)` with
`apply(params, x01 [B, H, W, 3]) -> [B, d]` differentiable; unit tests pass tiny stand-ins.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from invjax._src import compilation
from invjax._src import conv
from invjax import data as data_lib
from invjax._src import io
from invjax._src.checks import InvjaxError
from invjax.data.dataset import Dataset
from invjax.passeurs import poison


class Extractor(NamedTuple):
  """A frozen, differentiable feature extractor.

  apply: `apply(params, x01 [B, H, W, C] float in [0, 1]) -> [B, d]`; keep one function object
    per extractor (it is a static jit argument: a new object recompiles).
  params: its parameters (pytree).
  name: identifies the extractor in feature-cache keys (include the resolution).
  """
  apply: Callable[[Any, jax.Array], jax.Array]
  params: Any
  name: str


@functools.lru_cache(maxsize=None)
def _efficientnet_apply(resolution: int):
  from invjax.nets import efficientnet  # pylint: disable=g-import-not-at-top
  return functools.partial(efficientnet.features_from_float, resolution=resolution)


def efficientnet_extractor(resolution: int = 32) -> Extractor:
  """EfficientNet-Lite0 (ImageNet weights) penultimate features [B, 1280] at `resolution`."""
  from invjax.nets import efficientnet_convert  # pylint: disable=g-import-not-at-top
  if int(resolution) < 32:
    raise InvjaxError(f"resolution must be >= 32, got {resolution}")
  return Extractor(_efficientnet_apply(int(resolution)), efficientnet_convert.load_pretrained(),
                   f"efficientnet_lite0_r{int(resolution)}")


def _random_conv_apply(params, x01):
  dn = ("NHWC", "HWIO", "NHWC")
  h = jax.nn.relu(conv.conv_general_dilated(x01 - 0.5, params["k1"], (2, 2), "SAME",
                                            dimension_numbers=dn))
  h = jax.nn.relu(conv.conv_general_dilated(h, params["k2"], (2, 2), "SAME",
                                            dimension_numbers=dn))
  b, hh, ww, c = h.shape
  h = h.reshape(b, 4, hh // 4, 4, ww // 4, c).mean(axis=(2, 4))
  return h.reshape(b, 16 * c)


def random_conv_extractor(key: jax.Array, channels: int = 16) -> Extractor:
  """Untrained random features: two stride-2 3x3 ReLU convolutions, 4x4 average pooling.

  A cheap baseline and the stand-in for the CNN in tests: `[B, 16 * channels]` features of
  `[B, H, W, 3]` images with H, W divisible by 16.
  """
  k1, k2 = jax.random.split(key)
  params = {"k1": jax.random.normal(k1, (3, 3, 3, channels)) / 3.0,
            "k2": jax.random.normal(k2, (3, 3, channels, channels)) / np.sqrt(9.0 * channels)}
  return Extractor(_random_conv_apply, params, f"random_conv{channels}_{fingerprint(np.asarray(params['k1']))}")


EXTRACTORS = {
    "efficientnet_lite0": lambda config: efficientnet_extractor(
        int(_cfg(config, "resolution", 32))),
    "random_conv": lambda config: random_conv_extractor(
        jax.random.PRNGKey(int(_cfg(config, "seed", 0)))),
}


def make_extractor(config) -> Extractor:
  """The extractor named by config.extractor (default "efficientnet_lite0" at
  config.resolution; "random_conv": untrained random features, seeded by config.seed)."""
  name = _cfg(config, "extractor", "efficientnet_lite0")
  if name not in EXTRACTORS:
    raise InvjaxError(f"config.extractor must be one of {sorted(EXTRACTORS)}, got {name!r}")
  return EXTRACTORS[name](config)


@functools.partial(compilation.jit, static_argnames=("apply",))
def _embed_batch(apply, params, x_uint8):
  return apply(params, x_uint8.astype(jnp.float32) / 255.0)


def embed(extractor: Extractor, x_uint8: np.ndarray, *, batch_size: int = 256,
          progress: bool = False, desc: str = "embed") -> np.ndarray:
  """Features of uint8 images [N, H, W, C] -> float32 [N, d], batched and jitted."""
  x_uint8 = np.asarray(x_uint8)
  if x_uint8.dtype != np.uint8 or x_uint8.ndim != 4:
    raise InvjaxError(f"images must be uint8 [N, H, W, C], got {x_uint8.dtype} {x_uint8.shape}")
  fn = lambda xb: _embed_batch(extractor.apply, extractor.params, xb)
  f = poison.batched_apply(fn, [x_uint8], batch_size, desc=desc, progress=progress)
  chex.assert_rank(f, 2)
  return np.asarray(f, np.float32)


def fingerprint(x: np.ndarray) -> str:
  """Short content hash of an array (shape, dtype and bytes)."""
  h = hashlib.sha1(f"{x.shape}{x.dtype}".encode())
  h.update(np.ascontiguousarray(x).tobytes())
  return h.hexdigest()[:16]


class FeatureCache:
  """Clean features kept in memory and, when `directory` is set, on disk (atomic `.npy` writes).

  Keyed by extractor name and image content, so a re-run with the same data and extractor
  reloads the features instead of recomputing them.
  """

  def __init__(self, directory: Optional[str] = None):
    self.directory = directory
    self._mem: Dict[str, np.ndarray] = {}

  def path(self, key: str) -> Optional[str]:
    return None if not self.directory else os.path.join(self.directory, f"features_{key}.npy")

  def get(self, extractor: Extractor, x_uint8: np.ndarray, *, batch_size: int = 256,
          progress: bool = False, desc: str = "embed") -> np.ndarray:
    key = f"{extractor.name}_{fingerprint(x_uint8)}"
    if key in self._mem:
      return self._mem[key]
    path = self.path(key)
    if path and os.path.isfile(path):
      f = np.load(path)
    else:
      f = embed(extractor, x_uint8, batch_size=batch_size, progress=progress, desc=desc)
      if path:
        os.makedirs(self.directory, exist_ok=True)
        tmp = path + ".tmp.npy"
        np.save(tmp, f)
        os.replace(tmp, path)
    self._mem[key] = f
    return f


# ----------------------------------------------------------------------------- SVM glue


def default_fit(features, labels, *, C: float = 1.0, tol: Optional[float] = None):
  """LIBLINEAR `-s 1 -c C` (squared hinge, one-vs-rest, no bias) via `invjax.passeurs.svm`
  (tol None: the solver's default)."""
  from invjax.passeurs import svm  # pylint: disable=g-import-not-at-top
  return svm.fit(features, labels, C=C, loss="squared_hinge", bias=False, tol=tol)


def liblinear_fit(features, labels, *, C: float = 1.0, tol: Optional[float] = None):
  """The same SVM fitted by the reference LIBLINEAR (`liblinear-official`, the `test` extra):
  `-s 1 -c C -e tol -B -1` (tol None: LIBLINEAR's 0.1). A faster choice for very large
  feature sets on a CPU.

  Returns:
    dict with `w` [K, d] and `b` [K] (zeros), rows ordered by class id.
  """
  try:
    from liblinear import liblinearutil  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise InvjaxError("svm_backend='liblinear' needs the liblinear-official package "
                      "(pip install liblinear-official)") from e
  import scipy.sparse  # pylint: disable=g-import-not-at-top
  f = np.asarray(features, np.float64)
  y = np.asarray(labels)
  if f.ndim != 2 or y.shape != (f.shape[0],):
    raise InvjaxError(f"features [N, d] and labels [N] expected, got {f.shape} and {y.shape}")
  tol = 0.1 if tol is None else float(tol)
  model = liblinearutil.train(y.astype(np.float64), scipy.sparse.csr_matrix(f),
                              f"-s 1 -c {float(C)} -e {float(tol)} -B -1 -q")
  k = int(y.max()) + 1
  w = np.zeros((k, f.shape[1]), np.float32)
  labs = model.get_labels()
  if len(labs) == 2:  # LIBLINEAR trains one model for two classes: w for labs[0], -w for labs[1].
    wv = np.asarray(model.get_decfun(0)[0], np.float32)
    w[labs[0]], w[labs[1]] = wv, -wv
  else:
    for i, lab in enumerate(labs):
      w[lab] = np.asarray(model.get_decfun(i)[0], np.float32)
  return {"w": w, "b": np.zeros(k, np.float32)}


FIT_BACKENDS = {"invjax": default_fit, "liblinear": liblinear_fit}


def scores(svm_params, features) -> np.ndarray:
  """Decision values W f + b, [N, classes]."""
  w = np.asarray(poison.svm_rows(svm_params, "w"), np.float32)
  b = poison.svm_rows(svm_params, "b")
  s = np.asarray(features, np.float32) @ w.T
  return s if b is None else s + np.asarray(b, np.float32)


def accuracy(svm_params, features, labels) -> float:
  """Fraction of argmax(W f + b) == label."""
  return float(np.mean(np.argmax(scores(svm_params, features), axis=1) == np.asarray(labels)))


def split_mask(test: Dataset, boundary: int = 5000) -> np.ndarray:
  """True for the public half (official test index < boundary)."""
  m = np.asarray(test.index) < boundary
  if m.all() or not m.any():
    raise InvjaxError(f"public/private split at official index {boundary} leaves one half empty "
                      f"(test indices span {test.index.min()}..{test.index.max()})")
  return m


# ----------------------------------------------------------------------------- experiment


@dataclasses.dataclass
class ExperimentResult:
  """What `run_experiment` measured.

  rows: one dict per (method, steps): method ("clean", "sign", "rotation"), steps, public_acc,
    private_acc, linf (grey levels), mean_abs_delta (grey levels), seconds (for that row).
  poisoned: method -> {steps: poisoned training `Dataset`} (uint8, official indices).
  train, test: the clean datasets; public: bool mask over `test`.
  svms: "target" (fitted on public test features), "clean" (on clean train), and
    "<method>_<k>" (on poisoned train).
  features: "train", "test" clean features and "<method>_<k>" poisoned train features.
  """
  rows: List[Dict[str, Any]]
  poisoned: Dict[str, Dict[int, Dataset]]
  train: Dataset
  test: Dataset
  public: np.ndarray
  svms: Dict[str, Any]
  features: Dict[str, np.ndarray]
  config: Dict[str, Any]


def _cfg(config, name, default):
  try:
    v = config[name] if isinstance(config, dict) else getattr(config, name)
  except (KeyError, AttributeError):
    return default
  return default if v is None else v


def _methods(config) -> Tuple[str, ...]:
  m = _cfg(config, "methods", "sign")
  methods = tuple(s.strip() for s in m.split(",")) if isinstance(m, str) else tuple(m)
  for s in methods:
    if s not in ("sign", "rotation"):
      raise InvjaxError(f"config.methods must hold 'sign' and/or 'rotation', got {s!r}")
  return methods


def make_fit_fn(config) -> Callable[..., Any]:
  """`fit_fn(features, labels)` from config.svm_backend ("invjax" default, or "liblinear"),
  config.svm_C (default 1) and config.svm_tol (default None: the backend's own default)."""
  backend = _cfg(config, "svm_backend", "invjax")
  if backend not in FIT_BACKENDS:
    raise InvjaxError(f"config.svm_backend must be one of {sorted(FIT_BACKENDS)}, got {backend!r}")
  tol = _cfg(config, "svm_tol", None)
  return functools.partial(FIT_BACKENDS[backend], C=float(_cfg(config, "svm_C", 1.0)),
                           tol=None if tol is None else float(tol))


def subset(ds: Dataset, limit: int, *, boundary: Optional[int] = None) -> Dataset:
  """First `limit` examples (0: all); with `boundary`, the first limit/2 of each half."""
  if not limit or limit >= len(ds):
    return ds
  if boundary is None:
    return ds.take(np.arange(limit))
  pub = np.where(ds.index < boundary)[0][:limit // 2]
  priv = np.where(ds.index >= boundary)[0][:limit - limit // 2]
  return ds.take(np.concatenate([pub, priv]))


def load_data(config) -> Tuple[Dataset, Dataset]:
  """(train, test) from `config.dataset` / `config.data_dir`, cut by train_limit/test_limit."""
  name = _cfg(config, "dataset", "cifar10_mini")
  data_dir = _cfg(config, "data_dir", "") or None
  train = data_lib.load(name, "train", data_dir)
  test = data_lib.load(name, "test", data_dir)
  boundary = int(_cfg(config, "public_boundary", 5000))
  return (subset(train, int(_cfg(config, "train_limit", 0))),
          subset(test, int(_cfg(config, "test_limit", 0)), boundary=boundary))


def run_experiment(config, *, extractor: Optional[Extractor] = None,
                   train: Optional[Dataset] = None, test: Optional[Dataset] = None,
                   fit_fn: Optional[Callable[..., Any]] = None,
                   cache: Optional[FeatureCache] = None, progress: bool = True,
                   log: Callable[[str], None] = print) -> ExperimentResult:
  """Clean pipeline, then `config.steps` poisoning steps per method; see the module docstring.

  Args:
    config: ml_collections.ConfigDict (or dict) with fields dataset, data_dir, train_limit,
      test_limit, extractor, resolution, batch_size, steps, methods ("sign", "rotation" or both, comma
      separated), margin, sign_momentum (0: plain sign steps; > 0: `sign_step_momentum`),
      rotation_delta, svm_backend ("invjax" or "liblinear"), svm_C,
      svm_tol, public_boundary.
    extractor: feature extractor; default `make_extractor(config)` (config.extractor,
      EfficientNet-Lite0 at config.resolution unless told otherwise).
    train, test: datasets; default `load_data(config)`.
    fit_fn: `fit_fn(features, labels) -> svm params`; default `FIT_BACKENDS[config.svm_backend]`
      with C=config.svm_C, tol=config.svm_tol.
    cache: clean-feature cache (e.g. `FeatureCache(workdir)`); default in memory.
    progress: tqdm progress bars.
    log: called with one line per finished row.

  Returns:
    `ExperimentResult`.
  """
  steps = int(_cfg(config, "steps", 3))
  if steps < 1:
    raise InvjaxError(f"config.steps must be >= 1, got {steps}")
  methods = _methods(config)
  if train is None or test is None:
    train_l, test_l = load_data(config)
    train = train_l if train is None else train
    test = test_l if test is None else test
  extractor = extractor or make_extractor(config)
  fit_fn = fit_fn or make_fit_fn(config)
  cache = cache or FeatureCache()
  bs = int(_cfg(config, "batch_size", 256))
  margin = _cfg(config, "margin", "ovr_hinge")
  if margin not in poison.MARGINS:
    raise InvjaxError(f"config.margin must be one of {poison.MARGINS}, got {margin!r}")
  public = split_mask(test, int(_cfg(config, "public_boundary", 5000)))
  momentum = float(_cfg(config, "sign_momentum", 0.0))
  if not momentum >= 0.0:
    raise InvjaxError(f"config.sign_momentum must be >= 0, got {momentum}")

  t0 = time.time()
  f_train = cache.get(extractor, train.x, batch_size=bs, progress=progress, desc="embed train")
  f_test = cache.get(extractor, test.x, batch_size=bs, progress=progress, desc="embed test")
  svms = {"target": fit_fn(f_test[public], test.y[public]), "clean": fit_fn(f_train, train.y)}
  feats = {"train": f_train, "test": f_test}
  rows = []

  def evaluate(name, k, x, f, seconds):
    t_fit = time.time()
    svm_params = svms["clean"] if name == "clean" else fit_fn(f, train.y)
    seconds += time.time() - t_fit  # the row's time includes its SVM fit
    if name != "clean":
      svms[f"{name}_{k}"] = svm_params
      feats[f"{name}_{k}"] = f
    d = np.abs(x.astype(np.int16) - train.x.astype(np.int16))
    row = dict(method=name, steps=k,
               public_acc=accuracy(svm_params, f_test[public], test.y[public]),
               private_acc=accuracy(svm_params, f_test[~public], test.y[~public]),
               linf=int(d.max()), mean_abs_delta=float(d.mean()),
               seconds=float(seconds))
    rows.append(row)
    log(f"{name:>8s} k={k}: public {row['public_acc']:.4f}  private {row['private_acc']:.4f}  "
        f"L_inf {row['linf']}  mean|delta| {row['mean_abs_delta']:.3f}  {seconds:.1f}s")

  evaluate("clean", 0, train.x, f_train, time.time() - t0)
  poisoned: Dict[str, Dict[int, Dataset]] = {}
  for method in methods:
    poisoned[method] = {}
    if method == "rotation":
      target = poison.rotation_targets(f_train, train.y, svms["clean"], svms["target"],
                                       delta=float(_cfg(config, "rotation_delta", 0.5)))
    x = train.x
    velocity = None
    for k in range(1, steps + 1):
      t1 = time.time()
      if method == "sign" and momentum:
        x, velocity = poison.sign_step_momentum(
            extractor.apply, extractor.params, x, train.y, svms["target"], velocity,
            momentum=momentum, margin=margin, batch_size=bs, progress=progress)
      elif method == "sign":
        x = poison.sign_step(extractor.apply, extractor.params, x, train.y, svms["target"],
                             margin=margin, batch_size=bs, progress=progress)
      else:
        x = poison.rotation_step(extractor.apply, extractor.params, x, target, batch_size=bs,
                                 progress=progress)
      if poison.linf(x, train.x) > k:
        raise AssertionError(f"{method} step {k}: L_inf {poison.linf(x, train.x)} > {k}")
      f = embed(extractor, x, batch_size=bs, progress=progress, desc=f"embed {method} k={k}")
      poisoned[method][k] = Dataset(x, train.y, train.index)
      evaluate(method, k, x, f, time.time() - t1)
  return ExperimentResult(rows=rows, poisoned=poisoned, train=train, test=test, public=public,
                          svms=svms, features=feats, config=_config_dict(config))


def _config_dict(config) -> Dict[str, Any]:
  if hasattr(config, "to_dict"):
    return config.to_dict()
  return dict(config) if isinstance(config, dict) else {}


# ----------------------------------------------------------------------------- artefacts


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


def write_artifacts(result: ExperimentResult, workdir: str) -> Dict[str, str]:
  """Writes results.md/json, accuracy_vs_steps.png, examples_<method>.png and
  poisoned_train_<method>_k<k>.npz (uint8 `x`, `y`, official `index`) into `workdir`.

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


# ----------------------------------------------------------------------------- audit


def audit_result(result: ExperimentResult, *, fit_fn: Callable[..., Any], key: jax.Array,
                 num_splits: int = 8, alpha: float = 0.01) -> Dict[str, Any]:
  """Runs `invjax.passeurs.audit.audit` on the clean training set and on each method's most
  poisoned training set (features reused from the experiment, no re-embedding).

  Returns:
    name ("clean", "<method>_k<k>") -> `AuditReport`.
  """
  from invjax.passeurs import audit as audit_lib  # pylint: disable=g-import-not-at-top
  sets = [("clean", result.train.x, result.features["train"], result.svms["clean"])]
  for method, by_k in result.poisoned.items():
    k = max(by_k)
    sets.append((f"{method}_k{k}", by_k[k].x, result.features[f"{method}_{k}"],
                 result.svms[f"{method}_{k}"]))
  reports = {}
  for name, x, f, svm_params in sets:
    reports[name] = audit_lib.audit(
        f, result.train.y, result.features["test"], result.test.y, result.public, fit_fn=fit_fn,
        key=key, train_x=x, test_x=result.test.x, num_splits=num_splits, alpha=alpha,
        train_svm=svm_params)
  return reports


def write_audit(reports: Dict[str, Any], workdir: str) -> str:
  """Writes audit.md (summaries) and audit.json into `workdir`; returns the markdown path."""
  os.makedirs(workdir, exist_ok=True)
  md = "\n\n".join(f"### {name}\n```\n{r.summary()}\n```" for name, r in reports.items())
  path = os.path.join(workdir, "audit.md")
  io.write_text(path, md + "\n")
  io.write_text(os.path.join(workdir, "audit.json"), json.dumps(
      {n: dataclasses.asdict(r) for n, r in reports.items()}, indent=2))
  return path
