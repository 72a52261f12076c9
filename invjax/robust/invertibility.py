"""Invertibility diagnostics: where an invertible network stops being numerically invertible.

Behrmann et al. (2021), "Understanding and mitigating exploding inverses in invertible neural
networks": a network that is a bijection in exact arithmetic can have an inverse whose local
Lipschitz constant explodes away from the data (out-of-distribution inputs, adversarial images),
so that float32 rounding in the latent is amplified into a reconstruction `decode(encode(x))`
far from `x`. For each set of points, `invertibility_report` measures:

* the reconstruction error per point, `max_i |decode(encode(x))_i - x_i|` in image units;
* the forward local Lipschitz lower bound `sigma_max(J_encode(x))` and the inverse one
  `sigma_max(J_decode(z))` at `z = encode(x)`, by power iteration on Jacobian-vector /
  vector-Jacobian products (`invjax.robust.lipschitz.local_lipschitz`; no dense Jacobian);
* a flag per point, "numerically non-invertible", when the reconstruction error exceeds
  `reconstruction_tol` or the inverse Lipschitz bound exceeds `inverse_lipschitz_max`
  (or either is NaN / infinite; non-finite values count as infinitely bad).

Defaults: `reconstruction_tol = 1/512`, half an 8-bit quantisation level: a larger error
changes the rounded image. `inverse_lipschitz_max = 1e4`: float32 rounds a latent of
magnitude ~1-10 to within ~1e-7-1e-6, which an inverse with local Lipschitz constant 1e4
amplifies to ~1e-3-1e-2, the size of `reconstruction_tol` (Behrmann et al. report inverse
bounds of 1e5 and more where Glow-like models break down).

The sets: "test" (the points `x`), "adversarial" (images you pass, e.g. `pgd_examples`), and
out-of-distribution inputs (`load_ood_images`): "uniform" noise, "constant" images, and other
datasets from tensorflow-datasets ("svhn", "cifar10", "cifar100") when their data are already
prepared (never downloaded here); an unavailable dataset is skipped with its reason in
`InvertibilityReport.skipped`.

The model is an invertible classifier (`encode` / `decode` methods, `invjax.flows.
InvertibleClassifier`) or a flow (`apply(v, x) -> (z, log_det)`, `method="inverse"`); it sees
`x + input_offset`. Stochastic log-det estimates (i-ResNet) get `rngs={"logdet": key}`.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from invjax._src import checks
from invjax._src import compilation
from invjax.robust import lipschitz

Array = jax.Array

RECONSTRUCTION_TOL = 1.0 / 512
INVERSE_LIPSCHITZ_MAX = 1e4
SYNTHETIC_OOD = ("uniform", "constant")
TFDS_OOD = {"svhn": "svhn_cropped", "cifar10": "cifar10", "cifar100": "cifar100"}
DEFAULT_OOD = ("uniform", "constant", "svhn")
QUANTILES = (0.5, 0.9, 0.99)


# ----------------------------------------------------------------------------- the model


def codec(model: Any, variables: Any, *, input_offset: float = 0.0,
          key: Optional[Array] = None) -> Tuple[Callable, Callable]:
  """`(encode, decode)` pure functions of images in image coordinates.

  `encode(x) = z` for the model input `x + input_offset`, `decode(z) = model inverse - offset`.
  Classifiers (`encode` / `decode` methods) use them; flows use `apply` and `method="inverse"`.
  """
  off = float(input_offset)
  rngs = {"logdet": jax.random.PRNGKey(0) if key is None else key}
  if hasattr(model, "encode") and hasattr(model, "decode"):
    encode = lambda v: model.apply(variables, v + off, method="encode", rngs=rngs)
    decode = lambda z: model.apply(variables, z, method="decode", rngs=rngs) - off
  elif hasattr(model, "inverse"):
    encode = lambda v: model.apply(variables, v + off, rngs=rngs)[0]
    decode = lambda z: model.apply(variables, z, method="inverse", rngs=rngs)[0] - off
  else:
    raise checks.InvjaxError(
        f"{type(model).__name__} is neither an invertible classifier (encode/decode) nor a "
        "flow (__call__ -> (z, log_det) and inverse)")
  return encode, decode


def logits_function(model: Any, variables: Any, *, input_offset: float = 0.0,
                    key: Optional[Array] = None) -> Callable[[Array], Array]:
  """`x -> logits` of an invertible classifier (its `encode` then `logits`), jitted."""
  if not (hasattr(model, "encode") and hasattr(model, "logits")):
    raise checks.InvjaxError(
        f"{type(model).__name__} has no encode/logits methods: adversarial examples need an "
        "invertible classifier (invjax.flows.InvertibleClassifier)")
  encode, _ = codec(model, variables, input_offset=input_offset, key=key)
  return compilation.jit(lambda v: model.apply(variables, encode(v), method="logits"))


def pgd_examples(model: Any, variables: Any, x: Array, y: Array, *, key: Array,
                 epsilon: float = 8 / 255, num_steps: int = 10, norm: str = "linf",
                 input_offset: float = 0.0, **pgd_kwargs):
  """PGD adversarial examples (`invjax.attacks.pgd`) on an invertible classifier.

  Returns the `AttackResult` (`x_adv`, `success`, distances); `x_adv` is the
  "adversarial" set of `invertibility_report`.
  """
  from invjax.attacks import gradient  # pylint: disable=g-import-not-at-top
  logits_fn = logits_function(model, variables, input_offset=input_offset)
  return gradient.pgd(logits_fn, x, y, key=key, epsilon=epsilon, num_steps=num_steps,
                      norm=norm, **pgd_kwargs)


# ----------------------------------------------------------------------------- OOD inputs


def _tfds_images(kind: str, n: int, data_dir: Optional[str], split: str) -> np.ndarray:
  name = TFDS_OOD[kind]
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise checks.InvjaxError(
        f"load_ood_images({kind!r}): tensorflow-datasets is not importable ({e}); install it "
        f"and prepare '{name}', or pass the images yourself (ood={{'{kind}': images}}), or use "
        f"kind='uniform' / 'constant'") from e
  try:
    ds = tfds.load(name, split=f"{split}[:{int(n)}]", data_dir=data_dir, batch_size=-1,
                   download=False, as_supervised=True)
    x, _ = tfds.as_numpy(ds)
  except Exception as e:  # pylint: disable=broad-except  # missing data, TensorFlow, ...
    where = data_dir or "tfds' default data_dir (~/tensorflow_datasets)"
    raise checks.InvjaxError(
        f"load_ood_images({kind!r}): the tfds dataset '{name}' is not available in {where} "
        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); it is never "
        f"downloaded here (download=False, no internet at test time): prepare it with "
        f"tfds.builder('{name}', data_dir=...).download_and_prepare() where there is internet "
        f"and pass data_dir, or pass the images yourself (ood={{'{kind}': images}}), or use "
        f"kind='uniform' / 'constant'") from e
  return np.asarray(x, np.float32) / 255.0


def load_ood_images(kind: str, n: int, *, key: Array, data_dir: Optional[str] = None,
                    image_shape: Sequence[int] = (32, 32, 3), split: str = "test",
                    fallback: Optional[str] = None) -> Array:
  """`n` out-of-distribution inputs in [0, 1] of per-example shape `image_shape`.

  Args:
    kind: "uniform" (i.i.d. U[0, 1) pixels), "constant" (each image one random colour:
      constant over all axes but the last), or a tensorflow-datasets set ("svhn" =
      `svhn_cropped`, "cifar10", "cifar100"; the first `n` of `split`, resized to
      `image_shape` when their size differs).
    n: number of inputs.
    key: PRNG key of the synthetic kinds (and of a fallback).
    data_dir: tfds data directory (None: tfds' default). Nothing is downloaded.
    image_shape: per-example shape of the model's input.
    split: tfds split.
    fallback: None: an unavailable tfds set raises `InvjaxError` saying why and what to do;
      "uniform" / "constant": warn with that message and return this kind instead.

  Returns:
    float32 `[n, *image_shape]`.
  """
  shape = tuple(int(s) for s in image_shape)
  if n < 1:
    raise checks.InvjaxError(f"n must be >= 1, got {n}")
  if kind == "uniform":
    return jax.random.uniform(key, (n,) + shape, jnp.float32)
  if kind == "constant":
    colour = jax.random.uniform(key, (n,) + (1,) * (len(shape) - 1) + shape[-1:], jnp.float32)
    return jnp.broadcast_to(colour, (n,) + shape)
  if kind not in TFDS_OOD:
    raise checks.InvjaxError(
        f"unknown OOD kind {kind!r}, expected one of {SYNTHETIC_OOD + tuple(TFDS_OOD)}")
  if fallback is not None and fallback not in SYNTHETIC_OOD:
    raise checks.InvjaxError(f"fallback must be None or one of {SYNTHETIC_OOD}, got {fallback!r}")
  try:
    x = _tfds_images(kind, n, data_dir, split)
  except checks.InvjaxError as e:
    if fallback is None:
      raise
    warnings.warn(f"{e}; using {fallback!r} images instead", UserWarning, stacklevel=2)
    return load_ood_images(fallback, n, key=key, image_shape=shape)
  if x.shape[1:] != shape:
    if x.ndim != 4 or len(shape) != 3 or x.shape[-1] != shape[-1]:
      raise checks.InvjaxError(
          f"load_ood_images({kind!r}): images of shape {x.shape[1:]} cannot become {shape}")
    x = jax.image.resize(x, (x.shape[0],) + shape, "bilinear")
  return jnp.clip(jnp.asarray(x), 0.0, 1.0)


# ----------------------------------------------------------------------------- the report


class SetDiagnostics(NamedTuple):
  """Per-point diagnostics of one set (all `[N]` numpy arrays; non-finite values are inf)."""
  name: str
  reconstruction_error: np.ndarray  # max_i |decode(encode(x))_i - x_i|
  forward_lipschitz: np.ndarray     # lower bound of sigma_max(J_encode(x))
  inverse_lipschitz: np.ndarray     # lower bound of sigma_max(J_decode(encode(x)))
  non_invertible: np.ndarray        # bool: error > tol or inverse Lipschitz > threshold

  def summary(self, quantiles: Sequence[float] = QUANTILES) -> dict:
    """Python numbers: count, error quantiles and max, Lipschitz medians and maxima, flags."""
    out = {"set": self.name, "n": int(self.reconstruction_error.size)}
    for q in quantiles:
      out[f"reconstruction_q{q:g}"] = float(np.quantile(self.reconstruction_error, q))
    out["reconstruction_max"] = float(np.max(self.reconstruction_error))
    for name in ("forward_lipschitz", "inverse_lipschitz"):
      v = getattr(self, name)
      out[f"{name}_median"], out[f"{name}_max"] = float(np.median(v)), float(np.max(v))
    out["non_invertible"] = int(np.sum(self.non_invertible))
    out["non_invertible_fraction"] = float(np.mean(self.non_invertible))
    return out


class InvertibilityReport(NamedTuple):
  """`invertibility_report`'s result: one `SetDiagnostics` per set, thresholds, skipped sets."""
  sets: Tuple[SetDiagnostics, ...]
  reconstruction_tol: float
  inverse_lipschitz_max: float
  skipped: Tuple[Tuple[str, str], ...] = ()  # (set name, reason)

  def get(self, name: str) -> SetDiagnostics:
    """The diagnostics of the set `name`."""
    for s in self.sets:
      if s.name == name:
        return s
    raise checks.InvjaxError(f"no set {name!r} in the report, it has {[s.name for s in self.sets]}")

  def summary(self) -> Tuple[dict, ...]:
    return tuple(s.summary() for s in self.sets)

  def markdown(self) -> str:
    """A markdown table, one row per set, then the thresholds and the skipped sets."""
    return markdown(self)


def markdown(report: InvertibilityReport) -> str:
  """The table of an `InvertibilityReport` (also `report.markdown()`)."""
  head = ("| set | n | recon. median | recon. q0.99 | recon. max | Lip fwd median / max "
          "| Lip inv median / max | non-invertible |")
  lines = [head, "|" + "---|" * 8]
  for s in report.summary():
    lines.append(
        f"| {s['set']} | {s['n']} | {s['reconstruction_q0.5']:.2e} | "
        f"{s['reconstruction_q0.99']:.2e} | {s['reconstruction_max']:.2e} | "
        f"{s['forward_lipschitz_median']:.3g} / {s['forward_lipschitz_max']:.3g} | "
        f"{s['inverse_lipschitz_median']:.3g} / {s['inverse_lipschitz_max']:.3g} | "
        f"{s['non_invertible']} ({100 * s['non_invertible_fraction']:.0f}%) |")
  lines.append("")
  lines.append(f"Non-invertible: reconstruction error > {report.reconstruction_tol:.3g} or "
               f"inverse Lipschitz lower bound > {report.inverse_lipschitz_max:.3g} (or "
               "non-finite). Lipschitz values are power-iteration lower bounds (l2).")
  for name, why in report.skipped:
    lines.append(f"Skipped {name}: {why}")
  return "\n".join(lines)


def _finite_or_inf(v) -> np.ndarray:
  v = np.asarray(v, np.float64)
  return np.where(np.isfinite(v), v, np.inf)


def _measure(encode, decode, num_iters: int):
  """The jitted per-chunk measurement: (reconstruction error, Lip fwd, Lip inv) `[batch]`."""

  def run(x, key):
    z = encode(x)
    err = jnp.max(jnp.abs((decode(z) - x).reshape(x.shape[0], -1)), axis=1)
    k_fwd, k_inv = jax.random.split(key)
    fwd = lipschitz.local_lipschitz(encode, x, key=k_fwd, num_iters=num_iters)
    inv = lipschitz.local_lipschitz(decode, z, key=k_inv, num_iters=num_iters)
    return err, fwd, inv

  return compilation.jit(run)


def diagnose(measure, name: str, x: Array, *, key: Array, batch_size: int,
             reconstruction_tol: float, inverse_lipschitz_max: float) -> SetDiagnostics:
  """`SetDiagnostics` of the points `x`, in chunks of `batch_size` (the last one padded, so
  that every chunk has one shape and `measure` compiles once)."""
  x = np.asarray(x, np.float32)
  n = x.shape[0]
  outs = []
  for i, start in enumerate(range(0, n, batch_size)):
    chunk = x[start:start + batch_size]
    m = chunk.shape[0]
    if m < batch_size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - m, axis=0)])
    res = measure(jnp.asarray(chunk), jax.random.fold_in(key, i))
    outs.append([np.asarray(r)[:m] for r in res])
  err, fwd, inv = (_finite_or_inf(np.concatenate(col)) for col in zip(*outs))
  flag = (err > reconstruction_tol) | (inv > inverse_lipschitz_max)
  return SetDiagnostics(name, err, fwd, inv, flag)


def _named_sets(value, default_name: str):
  if value is None:
    return []
  if isinstance(value, Mapping):
    return list(value.items())
  return [(default_name, value)]


def invertibility_report(model: Any, variables: Any, x: Array, *, key: Array,
                         adversarial: Union[None, Array, Mapping[str, Array]] = None,
                         ood: Union[None, Sequence[str], Mapping[str, Array]] = DEFAULT_OOD,
                         input_offset: float = 0.0,
                         reconstruction_tol: float = RECONSTRUCTION_TOL,
                         inverse_lipschitz_max: float = INVERSE_LIPSCHITZ_MAX,
                         num_iters: int = 20, batch_size: int = 32,
                         data_dir: Optional[str] = None) -> InvertibilityReport:
  """Reconstruction error and forward / inverse local Lipschitz bounds per set (module doc).

  Args:
    model, variables: an invertible classifier or a flow (see `codec`).
    x: `[N, ...]` test points in image coordinates (the set "test").
    key: PRNG key (power-iteration starts, synthetic OOD inputs, log-det estimates).
    adversarial: images (the set "adversarial", e.g. `pgd_examples(...).x_adv`), a mapping
      name -> images (several attacks), or None.
    ood: kinds for `load_ood_images` (N of each; tfds kinds that are not available are
      skipped with the reason in `skipped`), a mapping name -> images, or None.
    input_offset: the model sees `x + input_offset`.
    reconstruction_tol: flag points whose max-abs reconstruction error exceeds it.
    inverse_lipschitz_max: flag points whose inverse Lipschitz bound exceeds it.
    num_iters: power iterations per bound (each one JVP + one VJP).
    batch_size: points per compiled call.
    data_dir: tfds data directory of the tfds OOD kinds.

  Returns:
    `InvertibilityReport` (`.markdown()` for the table, `.get(name)` for a set).
  """
  checks.check_rank(x, (2, 3, 4, 5), "x")
  checks.check_floating(x, "x")
  checks.check_finite(x, "x")
  checks.check_positive(reconstruction_tol, "reconstruction_tol")
  checks.check_positive(inverse_lipschitz_max, "inverse_lipschitz_max")
  if batch_size < 1 or num_iters < 1:
    raise checks.InvjaxError(f"batch_size and num_iters must be >= 1, got {batch_size}, "
                             f"{num_iters}")
  k_codec, k_ood, k_measure = jax.random.split(key, 3)
  n, shape = int(np.shape(x)[0]), tuple(np.shape(x)[1:])
  sets = [("test", x)] + _named_sets(adversarial, "adversarial")
  skipped = []
  if isinstance(ood, Mapping):
    sets += list(ood.items())
  elif ood is not None:
    for i, kind in enumerate(ood):
      try:
        sets.append((kind, load_ood_images(kind, n, key=jax.random.fold_in(k_ood, i),
                                           data_dir=data_dir, image_shape=shape)))
      except checks.InvjaxError as e:
        if kind not in TFDS_OOD:
          raise
        skipped.append((kind, str(e)))
  for name, v in sets:
    if tuple(np.shape(v)[1:]) != shape:
      raise checks.InvjaxError(f"set {name!r} has per-example shape {tuple(np.shape(v)[1:])}, "
                               f"the test points {shape}")
  encode, decode = codec(model, variables, input_offset=input_offset, key=k_codec)
  measure = _measure(encode, decode, int(num_iters))
  bs = int(min(batch_size, max(int(np.shape(v)[0]) for _, v in sets)))
  diags = tuple(diagnose(measure, name, v, key=jax.random.fold_in(k_measure, i), batch_size=bs,
                         reconstruction_tol=reconstruction_tol,
                         inverse_lipschitz_max=inverse_lipschitz_max)
                for i, (name, v) in enumerate(sets))
  return InvertibilityReport(diags, float(reconstruction_tol), float(inverse_lipschitz_max),
                             tuple(skipped))
