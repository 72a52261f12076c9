"""invjax gradient attacks vs Foolbox 3 (through EagerPy's JAX path) on the same model.

The model is a small MLP trained for a few hundred full-batch Adam steps on
16x16 crops of the embedded mini CIFAR-10 (a random network is almost constant
on real images, so every attack would fail). Labels are the model's own
predictions, so clean accuracy is 100% and the success rate measures the attack.
"""
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from invjax import data
from invjax.attacks import gradient

fb = pytest.importorskip("foolbox")

N = 64


class _MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(h)


@pytest.fixture(scope="module")
def setup():
  model = _MLP()
  train = data.load("cifar10_mini", "train")
  xt = data.to_float(train.x[:, 8:24, 8:24])
  yt = jnp.asarray(train.y)
  params = model.init(jax.random.PRNGKey(0), xt[:1])
  opt = optax.adam(3e-3)

  @jax.jit
  def fit(params):
    def step(_, carry):
      p, s = carry
      g = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
          model.apply(p, xt), yt).mean())(p)
      u, s = opt.update(g, s, p)
      return optax.apply_updates(p, u), s
    return jax.lax.fori_loop(0, 150, step, (params, opt.init(params)))[0]

  params = fit(params)
  fn = jax.jit(lambda v: model.apply(params, v))
  test = data.load("cifar10_mini", "test")
  x = data.to_float(test.x[:N, 8:24, 8:24])
  y = jnp.argmax(fn(x), 1).astype(jnp.int32)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    fmodel = fb.JAXModel(fn, bounds=(0, 1))
  return fn, fmodel, x, y


def _run_foolbox(attack, fmodel, x, y, eps):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    _, clipped, success = attack(fmodel, x, y, epsilons=eps)
  return np.asarray(clipped), np.asarray(success)


def _inside(x_adv, x, eps, norm):
  delta = (np.asarray(x_adv) - np.asarray(x)).reshape(len(x), -1)
  dist = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
  return np.all(dist <= eps * (1 + 1e-5) + 1e-6) and x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("eps", [0.004, 0.008])
def test_fgsm_agrees_with_foolbox(setup, eps):
  fn, fmodel, x, y = setup
  fb_adv, fb_success = _run_foolbox(fb.attacks.FGSM(), fmodel, x, y, eps)
  ours = gradient.fgsm(fn, x, y, epsilon=eps)
  # Same deterministic algorithm: same images up to sign ties, same success masks.
  assert np.mean(np.abs(fb_adv - np.asarray(ours.x_adv)) < 1e-6) > 0.99
  assert np.sum(fb_success != np.asarray(ours.success)) <= 1
  assert 0.1 < fb_success.mean() < 1.0  # the budget is informative
  assert _inside(ours.x_adv, x, eps, "linf") and _inside(fb_adv, x, eps, "linf")


@pytest.mark.parametrize("norm,eps", [("linf", 0.005), ("linf", 0.012), ("l2", 0.2)])
def test_pgd_success_rate_agrees_with_foolbox(setup, norm, eps):
  fn, fmodel, x, y = setup
  steps, rel = 10, 0.1
  cls = fb.attacks.LinfPGD if norm == "linf" else fb.attacks.L2PGD
  fb_adv, fb_success = _run_foolbox(cls(steps=steps, rel_stepsize=rel), fmodel, x, y, eps)
  ours = gradient.pgd(fn, x, y, key=jax.random.PRNGKey(0), epsilon=eps, step_size=rel * eps,
                      num_steps=steps, norm=norm, early_stop=False)
  assert abs(fb_success.mean() - float(np.mean(ours.success))) <= 4 / N, (
      fb_success.mean(), np.mean(ours.success))
  assert 0.1 < fb_success.mean() < 1.0
  assert _inside(ours.x_adv, x, eps, norm) and _inside(fb_adv, x, eps, norm)
