"""Independence cross-entropy (iCE; Jacobsen et al. 2019, "Excessive invariance causes
adversarial vulnerability"): train an invertible classifier so that the nuisance part of its
latent (what the head does not read) carries no label information.

A nuisance classifier (a linear softmax head on the nuisance features) learns to predict the
label from the nuisance, and the encoder is trained to maximise that classifier's
cross-entropy, a min-max game:

    encoder:             min  CE(head(z_s), y) - independence_weight * min(nCE, log C)
    nuisance classifier: min  nCE = CE(nuisance(z_n), y)

(the paper also keeps a maximum-likelihood term on z_n, here the recipe's `nll_weight`). The
encoder's reward stops at log C, the cross-entropy of a uniform guess: past it the nuisance
classifier is only confidently wrong (it still reads the label, inverted), and without the
cap the encoder's loss is unbounded below — on the smoke Glow with nll_weight 0.01 it ran to
-40 with 4766 bits/dim in 150 steps.
The nuisance classifier's parameters are not trained by the model's optimizer: they live in the
train state's model_state (collection `NUISANCE_COLLECTION`) and take one SGD step per
training step on stop-gradient features (`independence_step`). Its input is standardised with
the batch's (stop-gradient) mean and std, so the encoder cannot win the game by rescaling z_n.

The nuisance features (`nuisance_features`, traceable inside the training step):
z[:, C:] for head="identity_slice", z[:, k:] for head="slice" with slice_dims=k < D, and
otherwise (I - Q Q^T) z with Q an orthonormal basis of the head's (trainable) column space,
the part of z that `logits = z @ A + b` ignores.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import optax

from invjax._src.checks import InvjaxError

NUISANCE_COLLECTION = "nuisance_classifier"
_HIGHEST = jax.lax.Precision.HIGHEST


def nuisance_features(model: Any, params: Any, z: jax.Array) -> jax.Array:
  """The part of flat latents z `[B, D]` that `model`'s head ignores, `[B, D']` (jit-able)."""
  d, c = z.shape[1], model.num_classes
  if model.head == "identity_slice":
    return z[:, c:]
  if model.head == "slice" and model.slice_dims is not None and model.slice_dims < d:
    return z[:, model.slice_dims:]
  a, _ = model.apply({"params": params}, method="linear_head")
  q, _ = jnp.linalg.qr(a)
  return z - jnp.dot(jnp.dot(z, q, precision=_HIGHEST), q.T, precision=_HIGHEST)


def init_nuisance_classifier(num_features: int, num_classes: int) -> Dict[str, jax.Array]:
  """A zero-initialised linear nuisance classifier {"kernel" [D', C], "bias" [C]}."""
  if num_features < 1:
    raise InvjaxError("independence training needs a nuisance part: the head reads every "
                      "latent dimension")
  return {"kernel": jnp.zeros((num_features, num_classes), jnp.float32),
          "bias": jnp.zeros((num_classes,), jnp.float32)}


def _standardise(f: jax.Array) -> jax.Array:
  mean = jax.lax.stop_gradient(jnp.mean(f, axis=0))
  std = jax.lax.stop_gradient(jnp.std(f, axis=0))
  return (f - mean) / (std + 1e-6)


def nuisance_cross_entropy(classifier: Dict[str, jax.Array], features: jax.Array,
                           labels: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """(mean CE, accuracy) of the nuisance classifier on batch-standardised features."""
  logits = _logits(classifier, features)
  ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
  return ce, jnp.mean(jnp.argmax(logits, -1) == labels)


def _logits(classifier, features):
  return jnp.dot(_standardise(features), classifier["kernel"], precision=_HIGHEST) + (
      classifier["bias"])


def independence_step(classifier: Dict[str, jax.Array], features: jax.Array,
                      labels: jax.Array, *, learning_rate: float
                      ) -> Tuple[jax.Array, Dict[str, jax.Array], Dict[str, jax.Array]]:
  """One round of the game on a batch.

  Returns (encoder_term, updated classifier, metrics): `encoder_term = -min(CE, log C)` of
  the current nuisance classifier (its gradient reaches the encoder through `features`, not
  the classifier), the classifier after one SGD step of `learning_rate` on its CE of the
  stop-gradient features, and {"nuisance_ce", "nuisance_accuracy"}.
  """
  frozen = jax.lax.stop_gradient(classifier)
  ce, acc = nuisance_cross_entropy(frozen, features, labels)
  grads = jax.grad(lambda p: nuisance_cross_entropy(p, jax.lax.stop_gradient(features),
                                                    labels)[0])(frozen)
  updated = jax.tree.map(lambda p, g: p - learning_rate * g, frozen, grads)
  term = -jnp.minimum(ce, jnp.log(float(classifier["bias"].shape[0])))
  return term, updated, {"nuisance_ce": jax.lax.stop_gradient(ce), "nuisance_accuracy": acc}
