"""The passeurs experiment: the evaluated pipeline before and after k poisoning steps.

The pipeline a buyer evaluates: embed images with a frozen ImageNet CNN (EfficientNet-Lite0,
`invjax.passeurs.features`), fit a LIBLINEAR-style linear SVM (`invjax.passeurs.svm.fit`:
squared hinge, C=1, one-vs-rest, no bias) on the training features, and report accuracy on
the *public* and *private* halves of the test set. The split is fixed and documented: by
official test index, 0-4999 public, 5000-9999 private (`split_mask`, `PUBLIC_BOUNDARY`); the
embedded mini test set holds 250 + 250 images by the same rule.

`run_experiment` runs the whole story: clean pipeline, then k = 1..steps poisoning steps
(`invjax.passeurs.poison`) of the training images toward the SVM fitted on the public test
features, re-embedding and re-fitting after every step; it returns the results table (public
acc, private acc, L_inf in grey levels, mean |delta|, seconds). `audit_result` runs the buyer's
audit on its clean and most poisoned training sets; `run_and_write` is the launch job (data,
extractor, experiment, audit, and the files of `invjax.passeurs.report`).

Across processes (`across_processes=True`, the default of `run_and_write` in a multi-process
run): every process loads all the images, embeds and poisons its own batches of them
(`invjax.passeurs.sharding`), and the features and poisoned images are gathered on every
process; every process fits the SVMs on the gathered features and takes process 0's
(`sharding.broadcast`), so all take the same poisoning gradient. The results, the poisoned
`.npz` (process 0 writes every file) and the audit equal those of a single process.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import jax
import numpy as np

from invjax import data as data_lib
from invjax._src import process
from invjax._src.checks import InvjaxError
from invjax.data.dataset import Dataset
from invjax.passeurs import audit as audit_lib
from invjax.passeurs import features as features_lib
from invjax.passeurs import poison
from invjax.passeurs import report
from invjax.passeurs import sharding
from invjax.passeurs import svm

PUBLIC_BOUNDARY = 5000
"""Official test indices below it form the public half, the others the private half."""
METHODS = ("sign", "rotation")


def split_mask(test: Dataset, boundary: int = PUBLIC_BOUNDARY) -> np.ndarray:
  """True for the public half (official test index < boundary), False for the private half."""
  m = np.asarray(test.index) < boundary
  if m.all() or not m.any():
    raise InvjaxError(f"public/private split at official index {boundary} leaves one half empty "
                      f"(test indices span {test.index.min()}..{test.index.max()})")
  return m


def subset(ds: Dataset, limit: int, *, boundary: Optional[int] = None) -> Dataset:
  """First `limit` examples (0: all); with `boundary`, the first limit/2 of each half."""
  if not limit or limit >= len(ds):
    return ds
  if boundary is None:
    return ds.take(np.arange(limit))
  pub = np.where(ds.index < boundary)[0][:limit // 2]
  priv = np.where(ds.index >= boundary)[0][:limit - limit // 2]
  return ds.take(np.concatenate([pub, priv]))


def load_data(dataset: str = "cifar10_mini", *, data_dir: Optional[str] = None,
              train_limit: int = 0, test_limit: int = 0,
              public_boundary: int = PUBLIC_BOUNDARY) -> Tuple[Dataset, Dataset]:
  """(train, test) of `dataset` (`invjax.data.load`), cut to the first `train_limit` training
  images and to `test_limit` test images, half from each side of `public_boundary` (0: all)."""
  train = data_lib.load(dataset, "train", data_dir or None)
  test = data_lib.load(dataset, "test", data_dir or None)
  return (subset(train, int(train_limit)),
          subset(test, int(test_limit), boundary=int(public_boundary)))


def scores(svm_params, features) -> np.ndarray:
  """Decision values W f + b, [N, classes]."""
  w = np.asarray(poison.svm_rows(svm_params, "w"), np.float32)
  b = poison.svm_rows(svm_params, "b")
  s = np.asarray(features, np.float32) @ w.T
  return s if b is None else s + np.asarray(b, np.float32)


def accuracy(svm_params, features, labels) -> float:
  """Fraction of argmax(W f + b) == label."""
  return float(np.mean(np.argmax(scores(svm_params, features), axis=1) == np.asarray(labels)))


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
  config: the settings recorded with the results (results.json).
  """
  rows: List[Dict[str, Any]]
  poisoned: Dict[str, Dict[int, Dataset]]
  train: Dataset
  test: Dataset
  public: np.ndarray
  svms: Dict[str, Any]
  features: Dict[str, np.ndarray]
  config: Dict[str, Any]


def _parse_methods(methods: Union[str, Sequence[str]]) -> Tuple[str, ...]:
  out = tuple(s.strip() for s in methods.split(",")) if isinstance(methods, str) else tuple(methods)
  for s in out:
    if s not in METHODS:
      raise InvjaxError(f"methods must hold 'sign' and/or 'rotation', got {s!r}")
  return out


def _poison_step(method, extractor, x, train, target, velocity, *, margin, momentum, batch_size,
                 progress, shard):
  """One step of `method` from the current images `x` (all rows) on this process's rows
  (`shard`), gathered; returns (x, velocity), the velocity of this process's rows only."""
  x_local = shard.take(x)
  if method == "rotation":
    out = poison.rotation_step(extractor.apply, extractor.params, x_local, shard.take(target),
                               batch_size=batch_size, progress=progress)
    return shard.gather(out), None
  if momentum:
    out, velocity = poison.sign_step_momentum(
        extractor.apply, extractor.params, x_local, shard.take(train.y), target, velocity,
        momentum=momentum, margin=margin, batch_size=batch_size, progress=progress)
    return shard.gather(out), velocity
  out = poison.sign_step(extractor.apply, extractor.params, x_local, shard.take(train.y),
                         target, margin=margin, batch_size=batch_size, progress=progress)
  return shard.gather(out), None


def run_experiment(*, extractor: features_lib.Extractor, train: Dataset, test: Dataset,
                   fit_fn: Callable[..., Any] = svm.fit, steps: int = 3,
                   methods: Union[str, Sequence[str]] = ("sign",), batch_size: int = 256,
                   margin: str = "ovr_hinge", sign_momentum: float = 0.0,
                   rotation_delta: float = 0.5, public_boundary: int = PUBLIC_BOUNDARY,
                   cache: Optional[features_lib.FeatureCache] = None, progress: bool = True,
                   log: Callable[[str], None] = print,
                   record: Optional[Mapping[str, Any]] = None,
                   across_processes: bool = False) -> ExperimentResult:
  """Clean pipeline, then `steps` poisoning steps per method; see the module docstring.

  Args:
    extractor: the frozen feature extractor (`features.make_extractor`).
    train, test: datasets (`load_data`).
    fit_fn: `fit_fn(features, labels) -> svm params`, the buyer's SVM (`svm.make_fit`).
    steps: poisoning steps k >= 1 per method (L_inf <= k grey levels).
    methods: "sign" and/or "rotation" (a sequence, or names separated by commas).
    batch_size: images per jitted call.
    margin: the loss of the sign steps, one of `poison.MARGINS`.
    sign_momentum: 0 for plain sign steps; > 0 for `poison.sign_step_momentum`.
    rotation_delta: rotation angle of `poison.rotation_targets`.
    public_boundary: official test index splitting public from private (`split_mask`).
    cache: clean-feature cache (e.g. `FeatureCache(workdir)`); default in memory.
    progress: tqdm progress bars.
    log: called with one line per finished row.
    record: settings stored as `result.config` (default: this call's keyword settings).
    across_processes: in a multi-process run, each process embeds and poisons its batches of
      the images and the SVMs are process 0's (module docstring); every process calls
      `run_experiment` with the same arguments and gets the same result. Progress bars on
      process 0 only.

  Returns:
    `ExperimentResult`.
  """
  steps = int(steps)
  if steps < 1:
    raise InvjaxError(f"steps must be >= 1, got {steps}")
  methods = _parse_methods(methods)
  if margin not in poison.MARGINS:
    raise InvjaxError(f"margin must be one of {poison.MARGINS}, got {margin!r}")
  momentum = float(sign_momentum)
  if not momentum >= 0.0:
    raise InvjaxError(f"sign_momentum must be >= 0, got {momentum}")
  if record is None:
    record = dict(extractor=extractor.name, steps=steps, methods=",".join(methods),
                  batch_size=batch_size, margin=margin, sign_momentum=momentum,
                  rotation_delta=rotation_delta, public_boundary=public_boundary)
  public = split_mask(test, int(public_boundary))
  cache = cache or features_lib.FeatureCache()
  bs = int(batch_size)
  across = bool(across_processes) and process.is_multiprocess()
  progress = progress and process.is_main_process()
  shard = sharding.shard_rows(len(train), bs, across_processes=across)
  if across:
    sharding.shard_rows(len(test), bs, across_processes=True)  # fails early: too few batches
    buyer_fit = fit_fn
    fit_fn = lambda f, y: sharding.broadcast(buyer_fit(f, y))
  embed_kw = dict(batch_size=bs, progress=progress, across_processes=across)

  t0 = time.time()
  f_train = cache.get(extractor, train.x, desc="embed train", **embed_kw)
  f_test = cache.get(extractor, test.x, desc="embed test", **embed_kw)
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
    target = svms["target"]
    if method == "rotation":
      target = poison.rotation_targets(f_train, train.y, svms["clean"], svms["target"],
                                       delta=float(rotation_delta))
    x, velocity = train.x, None
    for k in range(1, steps + 1):
      t1 = time.time()
      x, velocity = _poison_step(method, extractor, x, train, target, velocity, margin=margin,
                                 momentum=momentum, batch_size=bs, progress=progress,
                                 shard=shard)
      if poison.linf(x, train.x) > k:
        raise InvjaxError(f"{method} step {k}: L_inf {poison.linf(x, train.x)} > {k} grey levels")
      f = features_lib.embed(extractor, x, desc=f"embed {method} k={k}", **embed_kw)
      poisoned[method][k] = Dataset(x, train.y, train.index)
      evaluate(method, k, x, f, time.time() - t1)
  return ExperimentResult(rows=rows, poisoned=poisoned, train=train, test=test, public=public,
                          svms=svms, features=feats, config=dict(record))


def audit_result(result: ExperimentResult, *, fit_fn: Callable[..., Any], key: jax.Array,
                 num_splits: int = 8, alpha: float = 0.01) -> Dict[str, Any]:
  """Runs `invjax.passeurs.audit.audit` on the clean training set and on each method's most
  poisoned training set (features reused from the experiment, no re-embedding).

  Returns:
    name ("clean", "<method>_k<k>") -> `AuditReport`.
  """
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


def run_and_write(workdir: str, *, dataset: str, data_dir: Optional[str], train_limit: int,
                  test_limit: int, public_boundary: int, extractor: str, resolution: int,
                  seed: int, svm_backend: str, svm_C: float, svm_tol: Optional[float],
                  audit: bool, audit_splits: int, progress: bool = True,
                  log: Callable[[str], None] = print, record: Optional[Mapping[str, Any]] = None,
                  across_processes: Optional[bool] = None, **options) -> Dict[str, str]:
  """The launch job: data, extractor and SVM by name, `run_experiment`, the audit, the files.

  Every setting is explicit (the config file owns the values, `launch/configs/passeurs.py`):
  dataset, data_dir, train_limit, test_limit as in `load_data`; extractor, resolution, seed as
  in `features.make_extractor`; svm_backend, svm_C, svm_tol as `svm.make_fit`'s backend, C, tol;
  public_boundary and `options` (steps, methods, batch_size, margin, sign_momentum,
  rotation_delta) as in `run_experiment`; audit: run `audit_result` (key `PRNGKey(seed)`,
  `audit_splits` random splits). Clean features are cached under `workdir/cache`.
  across_processes: as in `run_experiment`; None: whether this is a multi-process run. Every
  process runs it (and the audit, the same on each); files and `log` lines come from process
  0 only.

  Returns:
    artefact name -> path (`report.write_artifacts`, plus "audit" for audit.md).
  """
  t0 = time.time()
  if across_processes is None:
    across_processes = process.is_multiprocess()
  if not process.is_main_process():
    log = lambda line: None
  os.makedirs(workdir, exist_ok=True)
  train, test = load_data(dataset, data_dir=data_dir, train_limit=train_limit,
                          test_limit=test_limit, public_boundary=public_boundary)
  fit_fn = svm.make_fit(svm_backend, C=svm_C, tol=svm_tol)
  result = run_experiment(
      extractor=features_lib.make_extractor(extractor, resolution=resolution, seed=seed),
      train=train, test=test, fit_fn=fit_fn, public_boundary=public_boundary,
      cache=features_lib.FeatureCache(os.path.join(workdir, "cache")), progress=progress,
      log=log, record=record, across_processes=across_processes, **options)
  paths = report.write_artifacts(result, workdir)
  log(report.results_markdown(result.rows))
  if audit:
    reports = audit_result(result, fit_fn=fit_fn, key=jax.random.PRNGKey(seed),
                           num_splits=audit_splits)
    paths["audit"] = report.write_audit(reports, workdir)
    for name, r in reports.items():
      log(f"[{name}] {r.summary()}")
  log(f"wall time {time.time() - t0:.1f}s; wrote {sorted(paths.values())}")
  return paths
