"""Lipschitz-margin losses against hand computations (scipy's logsumexp), the differentiable
constant against the certificate, and `train_classifier` with the margin loss end to end."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.special import logsumexp

from invjax import InvjaxError
from invjax import data as data_lib
from invjax import flows
from invjax.robust.certificates import certified_lipschitz
from invjax.robust import margin_training
from invjax.train import recipes

SHAPE = (4, 4, 2)


def _logits(b=6, k=4, seed=0):
  r = np.random.default_rng(seed)
  return r.normal(size=(b, k)).astype(np.float32), r.integers(0, k, b).astype(np.int32)


def _hand_ce(z, y):
  z = np.asarray(z, np.float64)
  return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(y)), y]))


def test_tsuzuku_is_cross_entropy_at_zero_and_of_shifted_logits_otherwise():
  logits, y = _logits()
  at_zero = margin_training.margin_loss(jnp.asarray(logits), jnp.asarray(y), lipschitz=3.0,
                                        epsilon=0.0)
  ref = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
  np.testing.assert_allclose(float(at_zero), float(ref), rtol=1e-6)
  lip, eps = 2.5, 0.2
  shifted = logits + np.sqrt(2) * lip * eps * (1 - np.eye(4)[y])
  loss = margin_training.margin_loss(jnp.asarray(logits), jnp.asarray(y), lipschitz=lip,
                                     epsilon=eps)
  np.testing.assert_allclose(float(loss), _hand_ce(shifted, y), rtol=1e-5)
  assert float(loss) > float(ref)


def test_gloro_bottom_class_by_hand():
  logits, y = _logits(seed=1)
  lip, eps = 1.5, 0.3
  others = np.where(np.eye(4)[y] > 0, -np.inf, logits)
  bottom = others.max(1) + np.sqrt(2) * lip * eps
  ref = _hand_ce(np.concatenate([logits, bottom[:, None]], 1), y)
  loss = margin_training.margin_loss(jnp.asarray(logits), jnp.asarray(y), lipschitz=lip,
                                     epsilon=eps, variant="gloro")
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  # y beats the bottom class exactly when the margin certifies radius eps
  margin = logits[np.arange(6), y] - others.max(1)
  for variant in margin_training.VARIANTS:
    z = margin_training.margin_logits(jnp.asarray(logits), jnp.asarray(y), lipschitz=lip,
                                      epsilon=eps, variant=variant)
    np.testing.assert_array_equal(np.argmax(np.asarray(z), 1) == y,
                                  margin > np.sqrt(2) * lip * eps)
  with pytest.raises(InvjaxError, match="variant"):
    margin_training.margin_loss(jnp.asarray(logits), jnp.asarray(y), lipschitz=1.0,
                                epsilon=0.1, variant="bogus")
  with pytest.raises(InvjaxError, match="epsilon"):
    margin_training.margin_loss(jnp.asarray(logits), jnp.asarray(y), lipschitz=1.0,
                                epsilon=-0.1)


def test_differentiable_estimate_meets_the_certificate_once_converged():
  spec = recipes.classifier_spec(dict(name="lipschitz_resnet", stages=(1, 1), hidden=4,
                                      coeff=0.8), num_classes=3, image_shape=SHAPE,
                                 head="pooled")
  model = recipes.build_classifier(spec)
  x = jax.random.uniform(jax.random.PRNGKey(0), (2,) + SHAPE)
  v = model.init(jax.random.PRNGKey(1), x)
  v = flows.converge_spectral_norms(model, v, x, method="encode", n_rounds=50)
  cert = certified_lipschitz(model, v, power_iterations=0)
  est = float(margin_training.lipschitz_estimate(model, v))
  assert est <= cert.lipschitz * (1 + 1e-5)
  np.testing.assert_allclose(est, cert.lipschitz, rtol=1e-3)
  grads = jax.jit(jax.grad(
      lambda p: margin_training.lipschitz_estimate(model, {**v, "params": p})))(v["params"])
  head = np.asarray(grads["dense"]["kernel"])
  assert np.all(np.isfinite(head)) and np.any(head != 0)


def _tiny_dataset(n, seed):
  r = np.random.default_rng(seed)
  y = r.integers(0, 2, n).astype(np.int32)
  x = r.integers(60, 120, (n,) + SHAPE)
  x[:, :, :, 0] += 100 * y[:, None, None]
  return data_lib.Dataset(x.astype(np.uint8), y, np.arange(n, dtype=np.int32))


def test_train_classifier_with_the_margin_loss_writes_certified_results(tmp_path):
  spec = recipes.classifier_spec(dict(name="lipschitz_resnet", stages=(1,), hidden=4,
                                      kernel_sizes=(3, 1), coeff=0.8),
                                 num_classes=2, image_shape=SHAPE, head="slice")
  results = recipes.train_classifier(
      spec, _tiny_dataset(64, 0), _tiny_dataset(32, 1), str(tmp_path), optimizer=optax.adam(1e-2),
      lipschitz_margin=0.1, margin_variant="gloro", noise_sigma=0.05, num_steps=6,
      batch_size=16, log_every=3, checkpoint_every=6, progress=False)
  with open(tmp_path / recipes.RESULTS_FILE) as f:
    written = json.load(f)
  for key in ("certified_lipschitz", "certified_accuracy", "lipschitz_margin", "test_accuracy"):
    assert key in written and written[key] == pytest.approx(results[key])
  assert 0.0 <= written["certified_accuracy"] <= written["test_accuracy"]
  assert written["certified_lipschitz"] > 0
  records = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
  assert any("lipschitz" in r and "margin_loss" in r for r in records)


def test_margin_training_needs_a_certifiable_flow(tmp_path):
  spec = recipes.classifier_spec(dict(name="irevnet", num_blocks=(1,), hidden=4),
                                 num_classes=2, image_shape=SHAPE, head="pooled")
  with pytest.raises(InvjaxError, match="certifiable"):
    recipes.train_classifier(spec, _tiny_dataset(8, 0), _tiny_dataset(8, 1), str(tmp_path),
                             optimizer=optax.adam(1e-2), lipschitz_margin=0.1, num_steps=1,
                             batch_size=4, progress=False)
