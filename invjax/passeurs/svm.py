"""Linear SVM in JAX that matches LIBLINEAR (one-vs-rest, L2-regularised, C = 1 by default).

For each class c, with y_i = +1 if label_i == c else -1, it minimises LIBLINEAR's primal

    P_c(w, b) = 0.5 * (||w||^2 + b^2) + C * sum_i loss(y_i * (w . x_i + b))

* `loss="squared_hinge"`: max(0, 1 - m)^2, LIBLINEAR's default `-s 1` (and `-s 2`, same problem);
* `loss="hinge"`: max(0, 1 - m), LIBLINEAR's `-s 3`;
* `bias=False` is LIBLINEAR's `-B -1` (b = 0); `bias=True` is `-B 1`: a constant feature 1 is
  appended, so b is regularised like w.

Classes are the integers 0..K-1 and row c of `w` scores class c; `predict` takes the argmax.
With two classes LIBLINEAR trains ONE model; so do we: we solve "class 1 vs class 0" once and
return w = [-w1, w1], b = [-b1, b1] (the exact one-vs-rest optimum, since the class-0 problem is
the class-1 problem with y -> -y), so predictions equal LIBLINEAR's single model.

Solvers (`svm_newton.py`, `svm_dual_cd.py`; overview in `svm_solvers.py`): the squared hinge
uses primal Newton with preconditioned CG (`solver="newton"`, LIBLINEAR's `-s 2` algorithm and
stopping rule), whose work is `[B, d] x [d, K]` products for all classes at once, fused per row
block (one pass over the features per CG iteration); the same program runs on GPU/TPU, and warm
starts (`init=`) make repeated fits on similar features cheap. The hinge loss is not
differentiable, so it uses dual coordinate descent with shrinking (`solver="dual_cd"`,
LIBLINEAR's `-s 1`/`-s 3` algorithm; `key` fixes the sample order), which is also available for
the squared hinge. `fit_liblinear` fits the same SVM with the reference LIBLINEAR package, and
`make_fit(backend)` picks either (`bench/svm.py` compares them).

Which solver: Newton's cost is a full pass over the features per CG iteration, whatever the
number of margin violators; dual CD's cost is per visited sample, and shrinking leaves only the
samples at the margin active, but its epochs grow when many samples stay free (timings on
CNN-like features: docs/results/svm.md). So: Newton by default; `solver="dual_cd"` when the
features are separable with few margin violators (check `info.converged`, and compare
objectives).

Example:
  params = svm.fit(features, labels)                  # LIBLINEAR -s 1 -c 1 -B -1
  params, info = svm.fit(features, labels, return_info=True)
  acc = (svm.predict(params, features) == labels).mean()
"""
from __future__ import annotations

import functools
import warnings
from typing import NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np

from invjax._src import compilation
from invjax._src.checks import InvjaxError, check_finite, check_positive, check_rank, is_concrete
from invjax.passeurs import svm_dual_cd
from invjax.passeurs import svm_newton

LOSSES = ("squared_hinge", "hinge")
SOLVERS = ("newton", "dual_cd")
# Default stopping tolerances per solver (`tol` of `fit`):
# * newton: LIBLINEAR's `-s 2` gradient rule ||grad P|| <= tol * max(min(#pos, #neg), 1) / n *
#   ||grad P(0)||. LIBLINEAR's default -e 0.01 is loose: on the CNN-like problems of the
#   docstring it left P 0.4% above its minimum on non-separable data (3% of held-out predictions
#   different), 9% on nearly separable and 50% on separable data (8-10% different); 1e-3 costs
#   ~2x the time of 0.01 and gave 0.005% / 0.1% / 6% (0.4% / 1% / 8% different predictions).
#   Tighter than ~1e-4 the float32 objective stalls before the rule holds (converged False).
# * dual_cd: LIBLINEAR's dual rule (max PG - min PG, |max PG|, |min PG| <= tol over an epoch on
#   all samples); LIBLINEAR's own default 0.1 left P ~1% above its minimum on separable data,
#   1e-3 gives P within ~1e-5 relative on the tests' and the benchmarks' separable problems.
DEFAULT_TOL = {"newton": 1e-3, "dual_cd": 1e-3}
DEFAULT_MAX_ITER = {"newton": 1000, "dual_cd": 1000}  # LIBLINEAR: 1000 Newton iterations
# Rows per block of the Newton solver's passes over the features (a block stays in cache while
# both X_b @ P and X_b^T (...) are computed): 1024 x 1280 float32 = 5 MB.
BLOCK_SIZE = 1024


class SVMParams(NamedTuple):
  """A fitted one-vs-rest linear SVM (a pytree).

  Attributes:
    w: [classes, d] weights; row c scores class c.
    b: [classes] biases (zeros when fitted without bias).

  Also readable as a mapping (`params["w"]`, `params.get("b")`), like a params dict.
  """
  w: jax.Array
  b: jax.Array

  def __getitem__(self, key):
    if isinstance(key, str):
      if key not in self._fields:
        raise KeyError(key)
      return getattr(self, key)
    return tuple.__getitem__(self, key)

  def get(self, key, default=None):
    return getattr(self, key) if key in self._fields else default

  def keys(self):
    return self._fields


class SVMInfo(NamedTuple):
  """How the solver ended, per binary problem (`[problems]`; problems = classes, or 1 for K = 2).

  Attributes:
    iterations: Newton iterations or dual CD epochs (shrunk epochs included).
    inner_iterations: total conjugate-gradient iterations (Newton), or coordinates visited
      (dual CD: epochs * n without shrinking, fewer with it).
    residual: the stopping quantity at exit. newton: LIBLINEAR's `-s 2` scaled gradient norm
      ||grad P(w)|| / (max(min(#pos, #neg), 1) / n * ||grad P(0)||); dual_cd: LIBLINEAR's dual
      violation max(PGmax, 0) - min(PGmin, 0) over the last epoch (over all samples when
      converged; over the active ones when the epoch budget ran out during a shrunk epoch).
    converged: the stopping rule holds, residual <= tol (Newton may also stop early when a
      step no longer decreases P in floating point: converged is then False).
    alpha: [classes, n] dual variables, for `dual_objective` / `duality_gap`.
  """
  iterations: jax.Array
  inner_iterations: jax.Array
  residual: jax.Array
  converged: jax.Array
  alpha: jax.Array


# ----------------------------------------------------------------------------- validation


def _check_features(features, name="features"):
  check_rank(features, 2, name)
  if not (jnp.issubdtype(jnp.result_type(features), jnp.floating)
          or jnp.issubdtype(jnp.result_type(features), jnp.integer)):
    raise InvjaxError(f"{name} must be a real array, got dtype {jnp.result_type(features)}")
  if features.shape[0] < 1 or features.shape[1] < 1:
    raise InvjaxError(f"{name} must be non-empty [n, d], got shape {features.shape}")
  check_finite(features, name)


def _check_labels(labels, n, num_classes):
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise InvjaxError(f"labels must be integer class labels, got dtype {jnp.result_type(labels)}")
  if np.shape(labels) != (n,):
    raise InvjaxError(f"labels must have shape ({n},) (one per row of features), "
                      f"got {np.shape(labels)}")
  if is_concrete(labels):
    arr = np.asarray(labels)
    if arr.min() < 0:
      hi = "num_classes" if num_classes is None else num_classes
      raise InvjaxError(f"labels must lie in [0, {hi}) (non-negative class ids), got min "
                        f"{arr.min()}")
    if num_classes is not None and arr.max() >= num_classes:
      raise InvjaxError(f"labels must lie in [0, {num_classes}) (num_classes={num_classes}), "
                        f"got max {arr.max()}")
    if len(np.unique(arr)) < 2:
      raise InvjaxError(f"labels must contain at least 2 classes, got only class {arr[0]}")


def _check_loss(loss):
  if loss not in LOSSES:
    raise InvjaxError(f"loss must be one of {LOSSES}, got {loss!r}")


def _as_float(x):
  x = jnp.asarray(x)
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _signs(labels, num_classes, dtype):
  """[classes, n] one-vs-rest targets in {-1, +1}."""
  onehot = labels[None, :] == jnp.arange(num_classes)[:, None]
  return jnp.where(onehot, 1.0, -1.0).astype(dtype)


def _loss(margins, loss):
  h = jnp.maximum(1.0 - margins, 0.0)
  return h * h if loss == "squared_hinge" else h


# ----------------------------------------------------------------------------- model


def decision_function(params: SVMParams, features) -> jax.Array:
  """Scores `features @ w.T + b`: [n, d] -> [n, classes]."""
  params = SVMParams(jnp.asarray(params["w"]), jnp.asarray(params["b"]))
  features = jnp.asarray(features)
  check_rank(features, 2, "features")
  if features.shape[1] != params.w.shape[1]:
    raise InvjaxError(f"features must have {params.w.shape[1]} columns (the SVM's d), "
                      f"got shape {features.shape}")
  return jnp.dot(features, params.w.T, precision=jax.lax.Precision.HIGHEST) + params.b


def predict(params: SVMParams, features) -> jax.Array:
  """Predicted classes, argmax of `decision_function`: [n, d] -> int32 [n]."""
  return jnp.argmax(decision_function(params, features), axis=-1).astype(jnp.int32)


def primal_objective(params: SVMParams, features, labels, *, C: float = 1.0,
                     loss: str = "squared_hinge") -> jax.Array:
  """LIBLINEAR's primal 0.5 (||w_c||^2 + b_c^2) + C sum_i loss_i, per class: [classes].

  (With `bias=True` LIBLINEAR regularises b as the weight of a constant feature, hence b^2.)
  """
  _check_loss(loss)
  features = _as_float(features)
  labels = jnp.asarray(labels)
  w, b = jnp.asarray(params["w"]), jnp.asarray(params["b"])
  y = _signs(labels, w.shape[0], features.dtype)
  margins = y * decision_function(SVMParams(w, b), features).T
  return 0.5 * (jnp.sum(w * w, axis=1) + b * b) + C * jnp.sum(_loss(margins, loss), axis=1)


def dual_objective(alpha, features, labels, *, C: float = 1.0, loss: str = "squared_hinge",
                   bias: bool = False) -> jax.Array:
  """The dual function at `alpha` [classes, n], per class: [classes] (a lower bound of the primal).

  D(a) = sum_i a_i - 0.5 ||sum_i a_i y_i x~_i||^2 - [squared hinge] ||a||^2 / (4C), with x~_i the
  features (plus a constant 1 when `bias`); `alpha` must be feasible: 0 <= a_i (<= C for the hinge).
  """
  _check_loss(loss)
  features = _as_float(features)
  alpha = jnp.asarray(alpha, features.dtype)
  y = _signs(jnp.asarray(labels), alpha.shape[0], features.dtype)
  ay = alpha * y
  w = jnp.dot(ay, features, precision=jax.lax.Precision.HIGHEST)
  quad = jnp.sum(w * w, axis=1) + (jnp.sum(ay, axis=1) ** 2 if bias else 0.0)
  extra = jnp.sum(alpha * alpha, axis=1) / (4 * C) if loss == "squared_hinge" else 0.0
  return jnp.sum(alpha, axis=1) - 0.5 * quad - extra


def duality_gap(params: SVMParams, alpha, features, labels, *, C: float = 1.0,
                loss: str = "squared_hinge", bias: bool = False) -> jax.Array:
  """primal_objective(params) - dual_objective(alpha), per class: [classes], >= 0 (0 at optimum)."""
  return (primal_objective(params, features, labels, C=C, loss=loss)
          - dual_objective(alpha, features, labels, C=C, loss=loss, bias=bias))


# ----------------------------------------------------------------------------- fitting


@functools.partial(compilation.jit, static_argnames=("num_classes", "solver"))
def _fit_core(features, labels, w0, b0, key, C, tol, bias, squared, max_iter, *, num_classes,
              solver):
  """Jitted solve; returns (SVMParams, SVMInfo). `bias`, `squared` (0/1) and `max_iter` are traced
  so that fewer variants compile."""
  dtype = features.dtype
  binary = num_classes == 2
  y = _signs(labels, num_classes, dtype)          # [K, n]
  if binary:                                      # one problem: class 1 vs class 0
    y, w0, b0 = y[1:], w0[1:], b0[1:]
  if solver == "newton":
    xb, valid = svm_newton.to_blocks(features, BLOCK_SIZE)
    yb, _ = svm_newton.to_blocks(y.T, BLOCK_SIZE)
    res = svm_newton.newton_squared_hinge(xb, valid, yb, w0, b0, c=C, fit_bias=bias, eps=tol,
                                           max_iter=max_iter)
    res = res._replace(alpha=res.alpha[:, :features.shape[0]])
  else:
    # Class after class (lax.map, not vmap): each class runs only its own epochs over its own
    # active set, and its loop indexes single rows (vmapped, the loop ran the largest active set
    # of all classes with gathers/scatters over [K, n]: ~10x slower with shrinking, measured).
    solve = functools.partial(svm_dual_cd.dual_cd, c=C, squared=squared, fit_bias=bias, tol=tol,
                              max_iter=max_iter, key=key,
                              perms=svm_dual_cd.epoch_orders(key, features.shape[0]))
    sq_norms = jnp.sum(features * features, axis=1)
    res = jax.lax.map(lambda ya: solve(features, sq_norms, *ya), (y, jnp.zeros_like(y)))
  w, b, alpha = res.w, res.b, res.alpha
  if binary:
    w, b, alpha = jnp.concatenate([-w, w]), jnp.concatenate([-b, b]), jnp.concatenate([alpha, alpha])
  info = SVMInfo(iterations=res.iterations, inner_iterations=res.inner_iterations,
                 residual=res.residual, converged=res.converged, alpha=alpha)
  return SVMParams(w=w, b=b), info


def fit(features, labels, *, C: float = 1.0, loss: str = "squared_hinge", bias: bool = False,
        tol: Optional[float] = None, max_iter: Optional[int] = None,
        solver: Optional[str] = None, num_classes: Optional[int] = None,
        init: Optional[SVMParams] = None, key: Optional[jax.Array] = None,
        return_info: bool = False):
  """Fits LIBLINEAR's one-vs-rest L2-regularised linear SVM.

  Args:
    features: [n, d] real features (cast to float32 unless already floating; float64 is kept when
      jax_enable_x64 is on).
    labels: int [n] classes in [0, num_classes).
    C: the cost C > 0 (LIBLINEAR `-c`).
    loss: "squared_hinge" (`-s 1`, default) or "hinge" (`-s 3`).
    bias: False = `-B -1` (default, b = 0); True = `-B 1` (constant feature, regularised b).
    tol: stopping tolerance, LIBLINEAR's `-e` for the solver (default `DEFAULT_TOL[solver]` =
      1e-3): newton stops class c when ||grad P_c(w)|| <= tol * max(min(#pos, #neg), 1) / n *
      ||grad P_c(0)|| (`-s 2`'s rule; LIBLINEAR's default there is 0.01); dual_cd when an epoch
      over all samples has dual violation max(PGmax, 0) - min(PGmin, 0) <= tol (`-s 1`/`-s 3`'s
      rule; LIBLINEAR's default 0.1). See `SVMInfo.residual`.
    max_iter: Newton iterations / dual CD epochs; default `DEFAULT_MAX_ITER[solver]`.
    solver: "newton" (default for the squared hinge) or "dual_cd" (default, and the only choice,
      for the hinge; the fast choice for separable features with few margin violators, see
      above).
    num_classes: K; default max(labels) + 1 (must be given when `labels` is traced under jit).
    init: warm start for the Newton solver (e.g. the SVM of a slightly different dataset), an
      `SVMParams` with w [K, d], b [K]; ignored by dual CD.
    key: PRNG key for dual CD's sample order (default `PRNGKey(0)`: deterministic).
    return_info: also return an `SVMInfo`.

  Returns:
    `SVMParams` (w [K, d], b [K]), or `(SVMParams, SVMInfo)` with `return_info`. A warning is
    issued (outside jit) when a class did not reach `tol` (max_iter ran out, or Newton stalled).

  Raises:
    InvjaxError: features not 2-D / not finite, labels of the wrong length or dtype, fewer than 2
      classes, C <= 0, unknown loss or solver, a hinge loss with the Newton solver.
  """
  _check_loss(loss)
  solver = solver or ("newton" if loss == "squared_hinge" else "dual_cd")
  if solver not in SOLVERS:
    raise InvjaxError(f"solver must be one of {SOLVERS}, got {solver!r}")
  if solver == "newton" and loss == "hinge":
    raise InvjaxError("the hinge loss is not differentiable: use solver='dual_cd' (the default)")
  check_positive(C, "C")
  tol = DEFAULT_TOL[solver] if tol is None else tol
  check_positive(tol, "tol")
  max_iter = DEFAULT_MAX_ITER[solver] if max_iter is None else int(max_iter)
  if max_iter < 1:
    raise InvjaxError(f"max_iter must be >= 1, got {max_iter}")
  _check_features(features)
  n, d = np.shape(features)
  _check_labels(labels, n, num_classes)
  if num_classes is None:
    if not is_concrete(labels):
      raise InvjaxError("num_classes must be given when labels are traced (inside jit)")
    num_classes = int(np.max(np.asarray(labels))) + 1
  if num_classes < 2:
    raise InvjaxError(f"num_classes must be >= 2, got {num_classes}")

  features = _as_float(features)
  labels = jnp.asarray(labels, jnp.int32)
  dtype = features.dtype
  if init is None:
    w0, b0 = jnp.zeros((num_classes, d), dtype), jnp.zeros((num_classes,), dtype)
  else:
    w0, b0 = jnp.asarray(init["w"], dtype), jnp.asarray(init["b"], dtype)
    chex.assert_shape(w0, (num_classes, d), custom_message="init['w'] must be [classes, d]")
    chex.assert_shape(b0, (num_classes,), custom_message="init['b'] must be [classes]")
    if not bias:
      b0 = jnp.zeros_like(b0)
  key = jax.random.PRNGKey(0) if key is None else key
  params, info = _fit_core(features, labels, w0, b0, key, jnp.asarray(C, dtype),
                           jnp.asarray(tol, dtype), jnp.asarray(1.0 if bias else 0.0, dtype),
                           jnp.asarray(loss == "squared_hinge"), jnp.asarray(max_iter, jnp.int32),
                           num_classes=num_classes, solver=solver)
  chex.assert_shape(params.w, (num_classes, d))
  chex.assert_shape(params.b, (num_classes,))
  if is_concrete(info.converged) and not bool(np.all(np.asarray(info.converged))):
    warnings.warn(f"invjax.passeurs.svm.fit ({solver}) did not reach tol={tol} (max_iter="
                  f"{max_iter}, iterations {np.asarray(info.iterations)}; Newton also stops "
                  f"when P no longer decreases in floating point); residuals "
                  f"{np.asarray(info.residual)}", RuntimeWarning)
  return (params, info) if return_info else params


# ----------------------------------------------------------------------------- backends


def fit_liblinear(features, labels, *, C: float = 1.0, tol: Optional[float] = None) -> SVMParams:
  """The same SVM fitted by the reference LIBLINEAR (`liblinear-official`, the `test` extra):
  `-s 1 -c C -e tol -B -1` (tol None: LIBLINEAR's 0.1). A faster choice for very large
  feature sets on a CPU.

  Returns:
    `SVMParams` with `w` [K, d] float32 and `b` [K] (zeros), rows ordered by class id.
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
  w = liblinear_weights(model, int(y.max()) + 1, f.shape[1]).astype(np.float32)
  return SVMParams(w=jnp.asarray(w), b=jnp.zeros(w.shape[0], jnp.float32))


def liblinear_weights(model, num_classes: int, d: int) -> np.ndarray:
  """A trained LIBLINEAR model's weights as float64 [num_classes, d], row c scoring class c
  (LIBLINEAR trains one model for two classes: w for its first label, -w for the other)."""
  w = np.zeros((num_classes, d))
  labels = [int(l) for l in model.get_labels()]
  if len(labels) == 2:
    wv = np.asarray(model.get_decfun(0)[0])
    w[labels[0]], w[labels[1]] = wv, -wv
  else:
    for i, lab in enumerate(labels):
      w[lab] = model.get_decfun(i)[0]
  return w


BACKENDS = {"invjax": fit, "liblinear": fit_liblinear}


def make_fit(backend: str = "invjax", *, C: float = 1.0, tol: Optional[float] = None):
  """`fit_fn(features, labels) -> SVMParams`: LIBLINEAR `-s 1 -c C -B -1` (squared hinge,
  one-vs-rest, no bias) by `backend` ("invjax": `fit`; "liblinear": `fit_liblinear`); tol None:
  the backend's own default."""
  if backend not in BACKENDS:
    raise InvjaxError(f"svm_backend must be one of {sorted(BACKENDS)}, got {backend!r}")
  return functools.partial(BACKENDS[backend], C=float(C), tol=None if tol is None else float(tol))
