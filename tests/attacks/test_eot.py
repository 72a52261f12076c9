"""Expectation over transformations: the averaged model's gradient is the mean of the per-draw
gradients, and an attack through it beats one through a single draw on a model whose
single-draw gradient is noise-dominated (judged on the model's closed-form expectation)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src import checks
from invjax.attacks import eot
from invjax.attacks import gradient

D, K = 4 * 4 * 3, 3
RNG = np.random.default_rng(0)
W = jnp.asarray(RNG.normal(size=(D, K)).astype(np.float32))
V = jnp.asarray(RNG.normal(size=(D, K)).astype(np.float32))
SIGMA, FREQ, AMP = 0.1, 50.0, 0.1


def _noisy(x, key):
  """x + N(0, sigma^2) noise into a linear model plus a fast ripple: each draw's gradient is
  dominated by the ripple (amplitude AMP * FREQ = 5 vs |W| ~ 1), which averages away."""
  v = (x + SIGMA * jax.random.normal(key, x.shape)).reshape(x.shape[0], -1)
  return (v - 0.5) @ W + AMP * jnp.sin(FREQ * v) @ V


def _expected(x):
  """The closed-form expectation over the noise: E sin(f (v + s n)) = sin(f v) exp(-f^2 s^2 / 2)."""
  v = x.reshape(x.shape[0], -1)
  return (v - 0.5) @ W + AMP * np.exp(-(FREQ * SIGMA) ** 2 / 2) * jnp.sin(FREQ * v) @ V


def _points(n=32, seed=1):
  x = jnp.asarray(np.random.default_rng(seed).uniform(0.2, 0.8, (n, 4, 4, 3)), jnp.float32)
  return x, jnp.argmax(_expected(x), axis=1)


@pytest.mark.parametrize("draws_per_batch", [None, 3])
def test_expectation_gradient_is_the_mean_of_per_draw_gradients(draws_per_batch):
  x, _ = _points(4)
  key = jax.random.PRNGKey(2)
  smoothed = eot.expectation_logits(_noisy, num_samples=8, key=key,
                                    draws_per_batch=draws_per_batch)
  c = jnp.asarray([[1.0, -2.0, 0.5]])
  grad = jax.grad(lambda v: jnp.sum(smoothed(v) * c))(x)
  per_draw = [jax.grad(lambda v, k=k: jnp.sum(_noisy(v, k) * c))(x)
              for k in jax.random.split(key, 8)]
  np.testing.assert_allclose(np.asarray(grad), np.mean(np.asarray(per_draw), axis=0),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(
      np.asarray(smoothed(x)),
      np.mean([np.asarray(_noisy(x, k)) for k in jax.random.split(key, 8)], axis=0), atol=1e-5)
  # deterministic: the draws are fixed once
  np.testing.assert_array_equal(np.asarray(smoothed(x)), np.asarray(smoothed(x)))
  # single draws differ from each other, and their gradients are mostly ripple
  g0, g1 = per_draw[0].reshape(-1), per_draw[1].reshape(-1)
  assert float(jnp.dot(g0, g1) / (jnp.linalg.norm(g0) * jnp.linalg.norm(g1))) < 0.3


def test_probs_average_is_the_log_of_the_mean_probability():
  x, _ = _points(4)
  key = jax.random.PRNGKey(3)
  smoothed = eot.expectation_logits(_noisy, num_samples=5, key=key, average="probs")
  probs = np.mean([np.asarray(jax.nn.softmax(_noisy(x, k))) for k in jax.random.split(key, 5)],
                  axis=0)
  np.testing.assert_allclose(np.asarray(jax.nn.softmax(smoothed(x))), probs, atol=1e-5)
  np.testing.assert_allclose(np.exp(np.asarray(smoothed(x))).sum(1), 1.0, atol=1e-5)


def test_eot_attack_beats_a_single_draw_attack():
  x, y = _points()
  key = jax.random.PRNGKey(4)
  # every step taken (no early stop on the sampled model): the last iterates are compared
  budget = dict(epsilon=0.06, num_steps=20, random_start=False, early_stop=False)
  through_eot = eot.eot_attack(gradient.pgd, _noisy, x, y, key=key, num_samples=32, **budget)
  through_one = gradient.pgd(eot.single_draw(_noisy, jax.random.PRNGKey(5)), x, y, key=key,
                             **budget)
  # judged on the closed-form expected model, not on the draws the attacks saw
  success = lambda r: float(jnp.mean(jnp.argmax(_expected(r.x_adv), 1) != y))
  assert float(jnp.max(through_eot.linf)) <= 0.06 + 1e-6
  assert success(through_eot) >= 0.9, success(through_eot)
  assert success(through_eot) >= success(through_one) + 0.2, (success(through_eot),
                                                               success(through_one))
  np.testing.assert_array_equal(np.asarray(through_eot.num_grad_evals), 20 * 32)


def test_bad_arguments_raise():
  key = jax.random.PRNGKey(0)
  with pytest.raises(checks.InvjaxError, match="num_samples"):
    eot.expectation_logits(_noisy, num_samples=0, key=key)
  with pytest.raises(checks.InvjaxError, match="average"):
    eot.expectation_logits(_noisy, num_samples=2, key=key, average="median")
  with pytest.raises(checks.InvjaxError, match="draws_per_batch"):
    eot.expectation_logits(_noisy, num_samples=2, key=key, draws_per_batch=0)
