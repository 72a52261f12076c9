"""Passeurs poisoning: move TRAINING images by one grey level per step toward a test-fitted SVM.

A vendor evaluated on a public test set fits a linear SVM `w_target` on the test set's
features (`f = feature_fn(params, x01)`, a frozen CNN) and nudges every training image
so that its features become better classified by `w_target`. A linear SVM later fitted on
the poisoned training features then inherits the test set's decision directions and scores
higher on that public test set, while each pixel moved by at most `k` grey levels after `k`
steps (L_inf <= k/255) and the test set itself is never touched.

Two methods, both realised by sign-gradient steps of exactly -1, 0 or +1 in 0..255 units
(clipped to 0..255, kept uint8), each step taking the gradient at the current (already
poisoned) images:

* `sign_step` (the paper's seed method): decrease a per-image loss measuring how badly
  `w_target` classifies the image's features under its true label. `margin="ovr_hinge"`
  (the default) is the one-vs-rest squared-hinge loss of `w_target` summed over all classes,
  `sum_j max(0, 1 - t_j (w_j . f + b_j))^2` with `t_y = +1`, `t_j = -1` for `j != y`: the
  exact objective the LIBLINEAR-style SVM minimises, so a step lowers what the downstream
  solver pays for the point under the test-fitted hyperplanes. `margin="multiclass"` uses
  `-(s_y - max_{j != y} s_j)` with `s = W f + b` (the Crammer-Singer style top-2 margin).
  "ovr_hinge" is the default: it gains more public accuracy at every k on the embedded mini
  CIFAR-10 (docs/results/passeurs.md), because it pushes along all ten rows of `w_target` at
  once (the multiclass margin only moves the two top rows).
* `rotation_step` (the paper's comparison): the target features
  `f'_n = f_n + delta ((u . f_n) v - (v . f_n) u)`, with `u` and `v` the unit-normalised rows
  of the *true class* `y_n` of `w_train` (the SVM fitted on the clean training features)
  and `w_target`: an infinitesimal rotation of feature space in the plane (u, v) that turns
  `u` toward `v`, so an SVM refitted on `f'` rotates toward `w_target`. The pixels then take
  sign-gradient steps that decrease `||f(x') - f'_n||^2`; `f'_n` is computed once from the
  clean features (`rotation_targets`) and held fixed over the steps.

All functions work on batches: `batched_apply` pads the last batch so that one jitted
function (compiled once per feature function and batch size) serves every batch.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from invjax._src import compilation
from invjax._src import geometry
from invjax._src.checks import InvjaxError, check_finite, check_positive

FeatureFn = Callable[[Any, jax.Array], jax.Array]
"""`feature_fn(params, x01) -> [B, d]`: differentiable features of float images in [0, 1]."""

MARGINS = ("ovr_hinge", "multiclass")


# ----------------------------------------------------------------------------- batching


def batched_apply(fn: Callable[..., Any], arrays: Sequence[np.ndarray], batch_size: int, *,
                  desc: str = "", progress: bool = False) -> Any:
  """Applies `fn(*batch_arrays)` batch by batch and concatenates the outputs on axis 0.

  Args:
    fn: a (jitted) function of arrays whose leading axis is the batch; it returns an array
      or a tuple of arrays with the same leading axis.
    arrays: arrays of equal length N (numpy or jax).
    batch_size: batch size; the last batch is padded (by repeating its last row) to this
      size so that a jitted `fn` compiles once; the padding rows are dropped.
    desc: progress-bar label.
    progress: show a tqdm progress bar.

  Returns:
    numpy array(s) [N, ...] in the structure `fn` returns.
  """
  if batch_size <= 0:
    raise InvjaxError(f"batch_size must be > 0, got {batch_size}")
  n = int(np.shape(arrays[0])[0])
  if any(int(np.shape(a)[0]) != n for a in arrays):
    raise InvjaxError(f"batched_apply: arrays have different lengths {[np.shape(a) for a in arrays]}")
  if n == 0:
    raise InvjaxError("batched_apply: empty input")
  bs = min(batch_size, n)
  starts = range(0, n, bs)
  if progress:
    import tqdm  # pylint: disable=g-import-not-at-top
    starts = tqdm.tqdm(starts, desc=desc, total=-(-n // bs), leave=False)
  outs = []
  for s in starts:
    chunk = [np.asarray(a[s:s + bs]) for a in arrays]
    m = chunk[0].shape[0]
    if m < bs:
      chunk = [np.concatenate([c, np.repeat(c[-1:], bs - m, axis=0)]) for c in chunk]
    out = jax.device_get(fn(*chunk))
    outs.append(jax.tree_util.tree_map(lambda o, m=m: np.asarray(o)[:m], out))
  return jax.tree_util.tree_map(lambda *o: np.concatenate(o, axis=0), *outs)


# ----------------------------------------------------------------------------- losses


def ovr_hinge_loss(scores: jax.Array, y: jax.Array) -> jax.Array:
  """One-vs-rest squared hinge per example: sum_j max(0, 1 - t_j s_j)^2. scores [B, K] -> [B]."""
  t = 2.0 * jax.nn.one_hot(y, scores.shape[-1], dtype=scores.dtype) - 1.0
  return jnp.sum(jnp.square(jnp.maximum(0.0, 1.0 - t * scores)), axis=-1)


def _loss(margin: str, scores, y):
  if margin == "ovr_hinge":
    return ovr_hinge_loss(scores, y)
  return -geometry.logit_margin(scores, y)


def _sign_update(x_uint8, grad):
  """x - sign(grad) in 0..255 units, clipped, uint8 (one grey level per pixel at most)."""
  step = jnp.sign(grad).astype(jnp.int16)
  return jnp.clip(x_uint8.astype(jnp.int16) - step, 0, 255).astype(jnp.uint8)


def _to_float(x_uint8):
  return x_uint8.astype(jnp.float32) / 255.0


def _target_loss_grad(feature_fn, margin, params, x_uint8, y, w, b):
  def total_loss(x01):
    scores = feature_fn(params, x01) @ w.T + b
    return jnp.sum(_loss(margin, scores, y))
  return jax.grad(total_loss)(_to_float(x_uint8))


@functools.partial(compilation.jit, static_argnames=("feature_fn", "margin"))
def _sign_step_batch(feature_fn, margin, params, x_uint8, y, w, b):
  return _sign_update(x_uint8, _target_loss_grad(feature_fn, margin, params, x_uint8, y, w, b))


@functools.partial(compilation.jit, static_argnames=("feature_fn", "margin"))
def _momentum_step_batch(feature_fn, margin, params, x_uint8, y, w, b, velocity, momentum):
  grad = _target_loss_grad(feature_fn, margin, params, x_uint8, y, w, b)
  axes = tuple(range(1, grad.ndim))
  grad = grad / jnp.maximum(jnp.mean(jnp.abs(grad), axis=axes, keepdims=True), 1e-30)
  velocity = momentum * velocity + grad
  return _sign_update(x_uint8, velocity), velocity


@functools.partial(compilation.jit, static_argnames=("feature_fn",))
def _rotation_step_batch(feature_fn, params, x_uint8, target):
  def total_loss(x01):
    return jnp.sum(jnp.square(feature_fn(params, x01) - target))
  grad = jax.grad(total_loss)(_to_float(x_uint8))
  return _sign_update(x_uint8, grad)


# ----------------------------------------------------------------------------- public API


def svm_rows(svm_params, key: str):
  """`svm_params[key]` for a mapping, `svm_params.key` for a NamedTuple/dataclass, else None."""
  if isinstance(svm_params, dict) or hasattr(svm_params, "keys"):
    return svm_params.get(key) if hasattr(svm_params, "get") else svm_params[key]
  return getattr(svm_params, key, None)


def _check_svm(w, b, name):
  if w is None:
    raise InvjaxError(f"{name} must hold the SVM weights 'w' [classes, d]")
  w = jnp.asarray(w, jnp.float32)
  if w.ndim != 2:
    raise InvjaxError(f"{name}['w'] must have shape [classes, d], got {w.shape}")
  b = jnp.zeros((w.shape[0],), jnp.float32) if b is None else jnp.asarray(b, jnp.float32)
  if b.shape != (w.shape[0],):
    raise InvjaxError(f"{name}['b'] must have shape [{w.shape[0]}], got {b.shape}")
  check_finite(w, f"{name}['w']")
  return w, b


def _check_images_labels(x_uint8, y, num_classes=None):
  x_uint8 = np.asarray(x_uint8)
  if x_uint8.dtype != np.uint8:
    raise InvjaxError(f"x_uint8 must be uint8 images in 0..255, got dtype {x_uint8.dtype}")
  if x_uint8.ndim != 4:
    raise InvjaxError(f"x_uint8 must have shape [N, H, W, C], got {x_uint8.shape}")
  y = np.asarray(y)
  if not np.issubdtype(y.dtype, np.integer) or y.shape != (x_uint8.shape[0],):
    raise InvjaxError(f"y must be integer labels of shape [{x_uint8.shape[0]}], got "
                      f"{y.dtype} {y.shape}")
  if num_classes is not None and y.size and (y.min() < 0 or y.max() >= num_classes):
    raise InvjaxError(f"y must lie in [0, {num_classes}) (rows of the SVM), got "
                      f"[{y.min()}, {y.max()}]")
  return x_uint8, y.astype(np.int32)


def sign_step(feature_fn: FeatureFn, params: Any, x_uint8: np.ndarray, y: np.ndarray,
              w_target, *, margin: str = "ovr_hinge", batch_size: int = 256,
              progress: bool = False) -> np.ndarray:
  """One passeurs sign-gradient step on training images toward the test-fitted SVM.

  Args:
    feature_fn: `feature_fn(params, x01 [B, H, W, C]) -> [B, d]`, differentiable; pass the same
      function object each call (it is a static jit argument).
    params: the feature extractor's parameters (a pytree), frozen.
    x_uint8: uint8 [N, H, W, C], the current training images.
    y: int [N], their true labels.
    w_target: the SVM fitted on the public test features: a mapping with `w` [K, d] and
      optionally `b` [K].
    margin: "ovr_hinge" (default) or "multiclass", see the module docstring.
    batch_size: images per jitted call.
    progress: show a progress bar.

  Returns:
    uint8 [N, H, W, C]: each pixel moved by exactly -1, 0 or +1 grey level (then clipped to
    0..255) in the direction that decreases the chosen loss under `w_target`.
  """
  if margin not in MARGINS:
    raise InvjaxError(f"margin must be one of {MARGINS}, got {margin!r}")
  w, b = _check_svm(svm_rows(w_target, "w"), svm_rows(w_target, "b"), "w_target")
  x_uint8, y = _check_images_labels(x_uint8, y, w.shape[0])
  fn = lambda xb, yb: _sign_step_batch(feature_fn, margin, params, xb, yb, w, b)
  out = batched_apply(fn, [x_uint8, y], batch_size, desc="sign step", progress=progress)
  chex.assert_shape(out, x_uint8.shape)
  return out


def sign_step_momentum(feature_fn: FeatureFn, params: Any, x_uint8: np.ndarray, y: np.ndarray,
                       w_target, velocity: Optional[np.ndarray], *, momentum: float = 1.0,
                       margin: str = "ovr_hinge", batch_size: int = 256,
                       progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """A sign step along accumulated gradients (momentum iterative FGSM, Dong et al. 2018).

  `v <- momentum * v + g / mean|g|` per image, then every pixel moves one grey level
  against `sign(v)`. Plain iterated sign steps flip about half of the pixels back on the
  second step (the sign of the gradient at the moved image is nearly independent of the
  first one), so L_inf grows with k while the mean change does not; the accumulated
  direction keeps moving the same pixels the same way (the public-accuracy gain it brings at
  k >= 2 is in docs/results/passeurs.md).
  With `momentum=0` it is exactly `sign_step` (the normalisation keeps the sign).

  Args:
    feature_fn, params, x_uint8, y, w_target, margin, batch_size, progress: see `sign_step`.
    velocity: float32 [N, H, W, C] accumulated direction from the previous step, or None
      (first step: zeros).
    momentum: decay of the accumulated direction, >= 0.

  Returns:
    `(x_new uint8 [N, H, W, C], velocity float32 [N, H, W, C])`.
  """
  if margin not in MARGINS:
    raise InvjaxError(f"margin must be one of {MARGINS}, got {margin!r}")
  check_positive(momentum, "momentum", strict=False)
  w, b = _check_svm(svm_rows(w_target, "w"), svm_rows(w_target, "b"), "w_target")
  x_uint8, y = _check_images_labels(x_uint8, y, w.shape[0])
  if velocity is None:
    velocity = np.zeros(x_uint8.shape, np.float32)
  velocity = np.asarray(velocity, np.float32)
  if velocity.shape != x_uint8.shape:
    raise InvjaxError(f"velocity must have the images' shape {x_uint8.shape}, got {velocity.shape}")
  mu = jnp.float32(momentum)
  fn = lambda xb, yb, vb: _momentum_step_batch(feature_fn, margin, params, xb, yb, w, b, vb, mu)
  out, velocity = batched_apply(fn, [x_uint8, y, velocity], batch_size, desc="sign step",
                                progress=progress)
  chex.assert_shape(out, x_uint8.shape)
  return out, velocity


def rotation_targets(features: np.ndarray, y: np.ndarray, w_train, w_target, *,
                     delta: float = 0.5) -> np.ndarray:
  """Target features of the rotation variant: f' = f + delta ((u.f) v - (v.f) u).

  Args:
    features: float [N, d], the clean training features.
    y: int [N], true labels; row `y_n` of each SVM is used for example n.
    w_train: SVM fitted on the clean training features (mapping with `w` [K, d]).
    w_target: SVM fitted on the public test features (mapping with `w` [K, d]).
    delta: rotation angle in radians (first order); > 0.

  Returns:
    float32 [N, d] target features; `u`, `v` are the unit-normalised rows of `w_train` and
    `w_target` for the true class.
  """
  check_positive(delta, "delta")
  wt, _ = _check_svm(svm_rows(w_train, "w"), None, "w_train")
  wg, _ = _check_svm(svm_rows(w_target, "w"), None, "w_target")
  if wt.shape != wg.shape:
    raise InvjaxError(f"w_train and w_target must have the same shape, got {wt.shape} and {wg.shape}")
  f = jnp.asarray(features, jnp.float32)
  if f.ndim != 2 or f.shape[1] != wt.shape[1]:
    raise InvjaxError(f"features must have shape [N, {wt.shape[1]}], got {f.shape}")
  y = np.asarray(y)
  if y.shape != (f.shape[0],):
    raise InvjaxError(f"y must have shape [{f.shape[0]}], got {y.shape}")
  u = wt / jnp.linalg.norm(wt, axis=1, keepdims=True)
  v = wg / jnp.linalg.norm(wg, axis=1, keepdims=True)
  u, v = u[y], v[y]
  uf = jnp.sum(u * f, axis=1, keepdims=True)
  vf = jnp.sum(v * f, axis=1, keepdims=True)
  return np.asarray(f + delta * (uf * v - vf * u))


def rotation_step(feature_fn: FeatureFn, params: Any, x_uint8: np.ndarray,
                  target_features: np.ndarray, *, batch_size: int = 256,
                  progress: bool = False) -> np.ndarray:
  """One sign-gradient step decreasing ||f(x) - f'||^2 toward fixed target features.

  Args:
    feature_fn, params: the frozen feature extractor (see `sign_step`).
    x_uint8: uint8 [N, H, W, C] current images.
    target_features: float [N, d] from `rotation_targets`.
    batch_size, progress: as in `sign_step`.

  Returns:
    uint8 [N, H, W, C], each pixel moved by -1, 0 or +1 grey level.
  """
  x_uint8 = np.asarray(x_uint8)
  x_uint8, _ = _check_images_labels(x_uint8, np.zeros(len(x_uint8), np.int32))
  t = np.asarray(target_features, np.float32)
  if t.ndim != 2 or t.shape[0] != x_uint8.shape[0]:
    raise InvjaxError(f"target_features must have shape [{x_uint8.shape[0]}, d], got {t.shape}")
  check_finite(t, "target_features")
  fn = lambda xb, tb: _rotation_step_batch(feature_fn, params, xb, tb)
  out = batched_apply(fn, [x_uint8, t], batch_size, desc="rotation step", progress=progress)
  chex.assert_shape(out, x_uint8.shape)
  return out


def linf(x_uint8: np.ndarray, x_clean: np.ndarray) -> int:
  """Largest per-pixel change in 0..255 units."""
  return int(np.max(np.abs(np.asarray(x_uint8, np.int16) - np.asarray(x_clean, np.int16)),
                    initial=0))


def sign_poison(feature_fn: FeatureFn, params: Any, x_uint8: np.ndarray, y: np.ndarray,
                w_target, *, steps: int = 1, margin: str = "ovr_hinge", batch_size: int = 256,
                momentum: float = 0.0, progress: bool = False,
                callback: Optional[Callable[[int, np.ndarray], None]] = None) -> np.ndarray:
  """`steps` sign-gradient steps (`sign_step`), each from the previous poisoned images.

  Args:
    feature_fn, params, x_uint8, y, w_target, margin, batch_size, progress: see `sign_step`.
    steps: number of steps k >= 1.
    momentum: 0 (plain `sign_step`s) or the decay of `sign_step_momentum`.
    callback: optional `callback(k, x_k)` after each step (e.g. to evaluate the pipeline).

  Returns:
    uint8 [N, H, W, C] poisoned images with L_inf distance <= steps grey levels (checked
    after every step: `InvjaxError` otherwise).
  """
  if int(steps) < 1:
    raise InvjaxError(f"steps must be >= 1, got {steps}")
  x = np.asarray(x_uint8)
  velocity = None
  for k in range(1, int(steps) + 1):
    if momentum:
      x, velocity = sign_step_momentum(feature_fn, params, x, y, w_target, velocity,
                                       momentum=momentum, margin=margin,
                                       batch_size=batch_size, progress=progress)
    else:
      x = sign_step(feature_fn, params, x, y, w_target, margin=margin, batch_size=batch_size,
                    progress=progress)
    if linf(x, x_uint8) > k:
      raise InvjaxError(f"sign step {k}: L_inf {linf(x, x_uint8)} > {k} grey levels")
    if callback is not None:
      callback(k, x)
  return x
