"""Nuisance and logit label information of invertible classifiers whose latent is known:
the flow is the squeeze permutation, so images are made by decoding chosen latents."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from invjax import InvjaxError
from invjax.flows import Squeeze, make_classifier
from invjax.information import latent

N, C = 1000, 3


def model_and_images(copy_label: bool, head: str = "identity_slice", slice_dims=None, seed=0):
  """x = decode(z) with z[:, :C] = 2 onehot(y) + noise; the nuisance z[:, C:] is independent
  noise, or (copy_label) holds 2 y + 0.3 noise in its first dimension."""
  model = make_classifier(Squeeze(), num_classes=C, input_shape=(4, 4, 1), head=head,
                          slice_dims=slice_dims)
  rng = np.random.default_rng(seed)
  y = rng.integers(0, C, N)
  z = rng.standard_normal((N, 16)).astype(np.float32)
  z[:, :C] += 2.0 * np.eye(C)[y]
  if copy_label:
    z[:, C] = 2.0 * y + 0.3 * rng.standard_normal(N)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((2, 4, 4, 1)))
  x = model.apply(variables, jnp.asarray(z), method="decode")
  return model, variables, x, jnp.asarray(y), z


def test_nuisance_information_zero_for_noise_and_large_for_a_copied_label():
  for copy_label in (False, True):
    model, variables, x, y, z = model_and_images(copy_label)
    np.testing.assert_allclose(latent.nuisance_part(model, variables,
                                                    latent.latent_codes(model, variables, x)),
                               z[:, C:], atol=1e-6)  # the squeeze flow's latent is z
    rep = latent.nuisance_label_information(model, variables, x, y, key=jax.random.PRNGKey(1),
                                            num_dims=4, num_steps=200)
    assert rep.nuisance_dims == 13 and rep.projected_dims == 4
    if copy_label:  # y is a function of z_n (classes 6.7 sigma apart): I = H(y) ~ log 3
      assert abs(float(rep.ksg) - np.log(C)) < 0.06, rep
      assert float(rep.ce_bound) > 0.9 and float(rep.accuracy) > 0.95, rep
    else:
      assert abs(float(rep.ksg)) < 0.05 and abs(float(rep.ce_bound)) < 0.05, rep
      assert float(rep.accuracy) < float(rep.majority_accuracy) + 0.06, rep
    assert abs(float(rep.label_entropy) - np.log(C)) < 0.03


def test_nuisance_of_a_linear_head_is_the_complement_of_its_column_space():
  # head="slice" reading all 16 dims: the nuisance is the 13-dim subspace with z @ A = 0
  model, variables, x, y, z = model_and_images(True, head="slice")
  a, _ = model.apply(variables, method="linear_head")
  zn = latent.nuisance_part(model, variables, jnp.asarray(z))
  assert zn.shape == (N, 13)
  shift = np.random.default_rng(1).standard_normal((N, C)) @ np.linalg.pinv(np.asarray(a))
  np.testing.assert_allclose(latent.nuisance_part(model, variables, jnp.asarray(z + shift)), zn,
                             atol=1e-4)  # moving z inside the head's column space: no change
  # the same data with slice_dims=3: z[:, 3:]
  model3, variables3, *_ = model_and_images(True, head="slice", slice_dims=3)
  np.testing.assert_allclose(latent.nuisance_part(model3, variables3, jnp.asarray(z)), z[:, 3:])
  rep = latent.nuisance_label_information(model3, variables3, x, y, key=jax.random.PRNGKey(2),
                                          num_dims=4, num_steps=200)
  assert float(rep.ksg) > 0.9 and float(rep.ce_bound) > 0.9, rep


def test_random_projection():
  v = np.random.default_rng(2).standard_normal((50, 6)).astype(np.float32) * [1, 2, 3, 4, 5, 6]
  key = jax.random.PRNGKey(3)
  out = np.asarray(latent.project(v, 3, method="random", key=key))
  g = np.asarray(jax.random.normal(key, (6, 3)))
  ref = ((v - v.mean(0)) / v.std(0)) @ g
  np.testing.assert_allclose(out, (ref - ref.mean(0)) / ref.std(0), rtol=1e-4, atol=1e-4)
  assert latent.project(v, 10, method="pca").shape == (50, 6)  # at most d dimensions


def test_logit_information_against_numpy():
  model, variables, x, y, z = model_and_images(False)
  rep = latent.logit_information(model, variables, x, y)
  logits = z[:, :C].astype(np.float64)  # identity_slice: the logits are z[:, :C]
  yn = np.asarray(y)
  ce = np.mean(logsumexp(logits, axis=1) - logits[np.arange(N), yn])
  freq = np.bincount(yn, minlength=C) / N
  h = -np.sum(freq * np.log(freq))
  np.testing.assert_allclose([rep.cross_entropy, rep.label_entropy, rep.ce_bound],
                             [ce, h, h - ce], rtol=1e-4)
  np.testing.assert_allclose(rep.accuracy, np.mean(logits.argmax(1) == yn), atol=1e-6)
  assert 0.4 < float(rep.ksg) < np.log(C)  # informative, at most H(y) up to estimator noise


def test_input_errors():
  model, variables, x, y, _ = model_and_images(False)
  with pytest.raises(InvjaxError, match="integer labels"):
    latent.nuisance_label_information(model, variables, x, y[:10], key=jax.random.PRNGKey(0))
  with pytest.raises(InvjaxError, match="needs a PRNG key"):
    latent.project(np.ones((5, 3), np.float32), 2, method="random")
  with pytest.raises(InvjaxError, match="no nuisance"):
    full = make_classifier(Squeeze(), num_classes=16, input_shape=(4, 4, 1), head="identity_slice")
    latent.nuisance_part(full, {}, jnp.zeros((2, 16)))
  with pytest.raises(InvjaxError, match="NaN"):
    latent.nuisance_information_from_latent(jnp.full((10, 2), jnp.nan), jnp.zeros(10, int),
                                            key=jax.random.PRNGKey(0), num_classes=2)
