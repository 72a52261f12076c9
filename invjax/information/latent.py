"""Label information in the latent code of invertible classifiers (in nats).

An invertible classifier (`invjax.flows.InvertibleClassifier`) maps x to z = encode(x) and a
linear head reads part of z. What the head does not read is the *nuisance* z_n. Jacobsen et al.
(2019), "Excessive invariance causes adversarial vulnerability", show that when z_n carries
label information the classifier is invariant to it, and metameric attacks exploit that; the
quantity is I(z_n; y).

  rep = nuisance_label_information(model, variables, x, y, key=key)
  rep.ksg, rep.ce_bound          # two estimates of I(z_n; y)
  logit_information(model, variables, x, y).ce_bound   # I(logits; y) >= H(y) - CE

The nuisance (`nuisance_part`): z[:, C:] for head="identity_slice" (the logits are z[:, :C]);
z[:, k:] for head="slice" with slice_dims=k < D; otherwise the coordinates of z in an
orthonormal basis of the orthogonal complement of the head's column space (z @ A + b ignores
exactly that subspace, the "row_space" split of `invjax.attacks.invariance`).

Two estimates, since neither is exact in hundreds of dimensions:
* `ksg`: Ross's (2014) kNN estimator (`mixed_ksg_mutual_information`) on a projection of z_n
  to `num_dims` standardised dimensions (PCA, or a Gaussian random projection) — a lower bound
  of I(z_n; y) up to the estimator's bias, since projecting loses information;
* `ce_bound`: H(y) - CE of a multinomial logistic regression (optax) trained on z_n and
  evaluated on held-out samples — a variational lower bound (Barber & Agakov) whatever the
  classifier; H(y) is the held-out cross-entropy of the training label frequencies.
"""
from __future__ import annotations

import functools
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from invjax._src.checks import InvjaxError, check_finite, check_floating
from invjax.information.ksg import mixed_ksg_mutual_information

Array = jax.Array
PROJECTIONS = ("pca", "random")


class NuisanceInformation(NamedTuple):
  """Label information of the nuisance latent (nats unless said otherwise).

  Attributes:
    ksg: Ross-KSG estimate of I(P z_n; y) on all samples, P the projection to projected_dims.
    ce_bound: label_entropy - cross_entropy, a held-out lower bound of I(z_n; y).
    label_entropy: held-out CE of the training label frequencies (H(y)).
    cross_entropy: held-out CE of the logistic regression on (the top principal components
      of) z_n, its L2 weight chosen on a validation part of the training split.
    accuracy: its held-out accuracy.
    majority_accuracy: held-out accuracy of always predicting the most frequent training label.
    nuisance_dims: dimension of z_n.
    projected_dims: dimensions the KSG estimate sees.
  """
  ksg: Array
  ce_bound: Array
  label_entropy: Array
  cross_entropy: Array
  accuracy: Array
  majority_accuracy: Array
  nuisance_dims: int
  projected_dims: int


class LogitInformation(NamedTuple):
  """Label information of the logits (proxies of I(x; z_logits)).

  Attributes:
    ksg: Ross-KSG estimate of I(logits; y) (standardised logits).
    ce_bound: label_entropy - cross_entropy: I(logits; y) >= H(y) - CE of the model's own head.
    label_entropy: plug-in entropy of the labels.
    cross_entropy: the model's mean cross-entropy on (x, y).
    accuracy: the model's accuracy on (x, y).
  """
  ksg: Array
  ce_bound: Array
  label_entropy: Array
  cross_entropy: Array
  accuracy: Array


# ----------------------------------------------------------------------------- latents


def latent_codes(model, variables, x, *, batch_size: int = 256,
                 rngs: Optional[dict] = None) -> Array:
  """encode(x) `[n, D]`, `batch_size` images at a time through one jitted program; `rngs`
  go to `apply` (e.g. `{"logdet": key}` for an i-ResNet whose flow estimates its log-det)."""
  encode = jax.jit(lambda p, v: model.apply(p, v, method="encode", rngs=rngs))
  return jnp.concatenate([encode(variables, x[i:i + batch_size])
                          for i in range(0, x.shape[0], batch_size)])


def nuisance_part(model, variables, z) -> Array:
  """The part of flat latents z `[n, D]` that the model's head does not read `[n, D']`."""
  z = jnp.asarray(z)
  if z.ndim != 2:
    raise InvjaxError(f"z must be flat latents [n, D], got {z.shape}")
  d, c = z.shape[1], model.num_classes
  if model.head == "identity_slice":
    out = z[:, c:]
  elif model.head == "slice" and model.slice_dims is not None and model.slice_dims < d:
    out = z[:, model.slice_dims:]
  else:
    a, _ = model.apply(variables, method="linear_head")
    u, s, _ = np.linalg.svd(np.asarray(a, np.float64), full_matrices=True)
    rank = int(np.sum(s > s.max() * 1e-6)) if s.size and s.max() > 0 else 0
    out = z @ jnp.asarray(u[:, rank:], z.dtype)
  if out.shape[1] == 0:
    raise InvjaxError(f"the head reads every latent dimension (D={d}, head='{model.head}'): "
                      "there is no nuisance part")
  return out


def _standardise(v: Array, ref: Optional[Array] = None) -> Array:
  ref = v if ref is None else ref
  return (v - ref.mean(0)) / jnp.maximum(ref.std(0), 1e-8)


def project(v, num_dims: int, *, method: str = "pca", key: Optional[Array] = None) -> Array:
  """`v [n, d]` to `min(num_dims, d)` standardised dimensions: its top principal components
  ("pca") or a Gaussian random projection of its standardised columns ("random", needs key)."""
  if method not in PROJECTIONS:
    raise InvjaxError(f"projection must be one of {PROJECTIONS}, got '{method}'")
  if num_dims < 1:
    raise InvjaxError(f"num_dims must be >= 1, got {num_dims}")
  v = jnp.asarray(v)
  m = min(num_dims, v.shape[1])
  if method == "pca":
    centred = v - v.mean(0)
    _, _, vt = jnp.linalg.svd(centred, full_matrices=False)
    out = centred @ vt[:m].T
  else:
    if key is None:
      raise InvjaxError("projection='random' needs a PRNG key")
    out = _standardise(v) @ jax.random.normal(key, (v.shape[1], m), v.dtype)
  return _standardise(out)


# ----------------------------------------------------------------------------- probe


def fit_logistic_regression(features, labels, *, num_classes: int, num_steps: int = 300,
                            learning_rate: float = 0.05, weight_decay: float = 1e-3
                            ) -> Tuple[Array, Array]:
  """Multinomial logistic regression (W [d, C], b [C]) by full-batch Adam on the mean
  cross-entropy + weight_decay/2 |W|^2."""
  d = features.shape[1]
  opt = optax.adam(learning_rate)

  def loss(p):
    logits = features @ p[0] + p[1]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return ce + 0.5 * weight_decay * jnp.sum(p[0] ** 2)

  def step(carry, _):
    p, s = carry
    g = jax.grad(loss)(p)
    u, s = opt.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  p0 = (jnp.zeros((d, num_classes), features.dtype), jnp.zeros((num_classes,), features.dtype))
  (p, _), _ = jax.jit(lambda p: jax.lax.scan(step, (p, opt.init(p)), None, length=num_steps))(p0)
  return p


def _label_entropy(train_labels, test_labels, num_classes) -> Tuple[Array, Array]:
  """(held-out CE of the add-one-smoothed training frequencies, majority-label accuracy)."""
  counts = jnp.bincount(train_labels, length=num_classes) + 1.0
  logp = jnp.log(counts / counts.sum())
  return -jnp.mean(logp[test_labels]), jnp.mean(test_labels == jnp.argmax(counts))


def _check_xy(n: int, y, name: str = "y") -> Array:
  y = jnp.asarray(y)
  if not jnp.issubdtype(y.dtype, jnp.integer) or y.shape != (n,):
    raise InvjaxError(f"{name} must be integer labels of shape [{n}], got dtype {y.dtype} "
                      f"and shape {y.shape}")
  return y


def nuisance_information_from_latent(z_nuisance, y, *, key: Array, num_classes: int,
                                     num_dims: int = 4, projection: str = "pca", k: int = 3,
                                     test_fraction: float = 0.5, probe_dims: Optional[int] = 64,
                                     num_steps: int = 300,
                                     learning_rate: float = 0.05,
                                     weight_decays: Sequence[float] = (1e-3, 1e-2, 0.1, 1.0),
                                     chunk_size: int = 256) -> NuisanceInformation:
  """`NuisanceInformation` of given nuisance codes `[n, D']` and labels `[n]` (see the module
  docstring); `key` draws the held-out split and the random projection. The logistic
  regression reads the top `probe_dims` principal components of z_n (None: all of z_n); one
  probe per L2 weight in `weight_decays` is fitted on 80% of the training split and the one
  with the lowest cross-entropy on the other 20% is evaluated on the held-out split (a probe
  fitted on hundreds of samples in tens of dimensions overfits without it, and its held-out
  bound goes far below 0)."""
  z = jnp.asarray(z_nuisance)
  if z.ndim != 2:
    raise InvjaxError(f"z_nuisance must have shape [n, D'], got {z.shape}")
  check_floating(z, "z_nuisance")
  check_finite(z, "z_nuisance")
  y = _check_xy(z.shape[0], y)
  n = z.shape[0]
  if not 0.0 < test_fraction < 1.0:
    raise InvjaxError(f"test_fraction must lie in (0, 1), got {test_fraction}")
  n_test = int(round(test_fraction * n))
  if n_test < 2 or n - n_test < 5:
    raise InvjaxError(f"n={n} samples are too few to hold out test_fraction={test_fraction}")
  if projection not in PROJECTIONS or num_dims < 1:
    raise InvjaxError(f"projection must be one of {PROJECTIONS} and num_dims >= 1, got "
                      f"'{projection}' and {num_dims}")
  if probe_dims is not None and probe_dims < 1:
    raise InvjaxError(f"probe_dims must be >= 1 or None, got {probe_dims}")
  probe_dims = z.shape[1] if probe_dims is None else min(int(probe_dims), z.shape[1])
  return _nuisance_core(z, y, key, num_classes=int(num_classes), num_dims=int(num_dims),
                        probe_dims=probe_dims, projection=projection, k=int(k), n_test=n_test,
                        num_steps=int(num_steps), learning_rate=float(learning_rate),
                        weight_decays=tuple(float(w) for w in weight_decays),
                        chunk_size=int(chunk_size))


@functools.partial(jax.jit, static_argnames=("num_classes", "num_dims", "probe_dims",
                                             "projection", "k", "n_test", "num_steps",
                                             "learning_rate", "weight_decays", "chunk_size"))
def _nuisance_core(z, y, key, *, num_classes, num_dims, probe_dims, projection, k, n_test,
                   num_steps, learning_rate, weight_decays, chunk_size) -> NuisanceInformation:
  split_key, proj_key = jax.random.split(key)
  ksg = mixed_ksg_mutual_information(project(z, num_dims, method=projection, key=proj_key), y,
                                     k=k, chunk_size=chunk_size)
  perm = jax.random.permutation(split_key, z.shape[0])
  test, train = perm[:n_test], perm[n_test:]
  probe = z if probe_dims >= z.shape[1] else project(z, probe_dims, method="pca")
  f_train, f_test = _standardise(probe[train]), _standardise(probe[test], probe[train])
  n_fit = max(1, int(0.8 * train.shape[0]))
  fit = lambda wd: fit_logistic_regression(f_train[:n_fit], y[train][:n_fit],
                                           num_classes=num_classes, num_steps=num_steps,
                                           learning_rate=learning_rate, weight_decay=wd)
  ws, bs = jax.vmap(fit)(jnp.asarray(weight_decays, f_train.dtype))
  val_ce = jax.vmap(lambda w, b: optax.softmax_cross_entropy_with_integer_labels(
      f_train[n_fit:] @ w + b, y[train][n_fit:]).mean())(ws, bs)
  best = jnp.argmin(val_ce)
  logits = f_test @ ws[best] + bs[best]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y[test]).mean()
  h, majority = _label_entropy(y[train], y[test], num_classes)
  return NuisanceInformation(ksg, h - ce, h, ce, jnp.mean(jnp.argmax(logits, -1) == y[test]),
                             majority, int(z.shape[1]), int(min(num_dims, z.shape[1])))


def nuisance_label_information(model: Any, variables: Any, x, y, *, key: Array,
                               batch_size: int = 256, rngs: Optional[dict] = None,
                               **kwargs) -> NuisanceInformation:
  """How much label information the nuisance latent of `model` carries on (x, y).

  Args:
    model, variables: an `InvertibleClassifier` and its variables.
    x: images `[n, H, W, C]`; y: integer labels `[n]`.
    key: PRNG key (held-out split, random projection).
    batch_size: images encoded at once.
    rngs: passed to `model.apply` (see `latent_codes`).
    **kwargs: `nuisance_information_from_latent`'s keywords (num_dims, projection, k,
      test_fraction, probe_dims, num_steps, learning_rate, weight_decays, chunk_size).
  """
  y = _check_xy(np.shape(x)[0], y)
  z = nuisance_part(model, variables,
                    latent_codes(model, variables, x, batch_size=batch_size, rngs=rngs))
  return nuisance_information_from_latent(z, y, key=key, num_classes=model.num_classes, **kwargs)


def logit_information(model: Any, variables: Any, x, y, *, k: int = 3, batch_size: int = 256,
                      chunk_size: int = 256, rngs: Optional[dict] = None) -> LogitInformation:
  """Label information of the logits of `model` on (x, y) (`LogitInformation`); `rngs` as
  in `latent_codes`."""
  y = _check_xy(np.shape(x)[0], y)
  z = latent_codes(model, variables, x, batch_size=batch_size, rngs=rngs)
  logits = jax.jit(lambda p, v: model.apply(p, v, method="logits"))(variables, z)
  check_finite(logits, "logits")
  return _logit_core(logits, y, num_classes=int(model.num_classes), k=int(k),
                     chunk_size=int(chunk_size))


@functools.partial(jax.jit, static_argnames=("num_classes", "k", "chunk_size"))
def _logit_core(logits, y, *, num_classes, k, chunk_size) -> LogitInformation:
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  freq = jnp.bincount(y, length=num_classes) / y.shape[0]
  h = -jnp.sum(jnp.where(freq > 0, freq * jnp.log(jnp.where(freq > 0, freq, 1.0)), 0.0))
  ksg = mixed_ksg_mutual_information(_standardise(logits), y, k=k, chunk_size=chunk_size)
  return LogitInformation(ksg, h - ce, h, ce, jnp.mean(jnp.argmax(logits, -1) == y))


def information_summary(model: Any, variables: Any, x, y, *, key: Array,
                        input_offset: float = 0.0, rngs: Optional[dict] = None
                        ) -> Dict[str, float]:
  """Both label-information quantities of `model` on images `x` in [0, 1] (the model sees
  `x + input_offset`), as JSON-able floats in nats: the nuisance latent's (KSG and the
  held-out cross-entropy bound) and the logits' (KSG and H(y) - CE)."""
  v = jnp.asarray(x) + float(input_offset)
  nuisance = nuisance_label_information(model, variables, v, y, key=key, rngs=rngs)
  logits = logit_information(model, variables, v, y, rngs=rngs)
  return {"nuisance_ksg": float(nuisance.ksg), "nuisance_ce_bound": float(nuisance.ce_bound),
          "nuisance_dims": int(nuisance.nuisance_dims), "logit_ksg": float(logits.ksg),
          "logit_ce_bound": float(logits.ce_bound),
          "label_entropy": float(logits.label_entropy), "num_examples": int(np.shape(x)[0])}
