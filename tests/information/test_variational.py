"""Variational MI bounds: against scipy formulas, against closed-form Gaussian MI with the
analytically optimal critic, MINE's corrected gradient against its closed form, and a short
training of each bound (Poole et al. 2019 report NWJ / MINE / InfoNCE within ~10-20% of the
true MI of correlated Gaussians at 1-2 nats)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from invjax import InvjaxError
from invjax.information import critics
from invjax.information import variational as V
from tests.information.gaussians import gaussians


def optimal_scores(x, y, rho):
  """log p(y_j | x_i) / p(y_j) for every pair, float64 [n, n]."""
  x, y = x.astype(np.float64), y.astype(np.float64)
  s2 = 1 - rho ** 2
  quad = ((y[None, :, :] - rho * x[:, None, :]) ** 2 / (2 * s2) - y[None, :, :] ** 2 / 2)
  return -0.5 * x.shape[1] * np.log(s2) - quad.sum(-1)


def np_bounds(s):
  n = len(s)
  off = s[~np.eye(n, dtype=bool)]
  lme_off = logsumexp(off) - np.log(off.size)
  return {"infonce": np.mean(np.diag(s) - logsumexp(s, axis=1)) + np.log(n),
          "nwj": np.mean(np.diag(s)) - np.exp(lme_off - 1),
          "dv": np.mean(np.diag(s)) - lme_off}


def test_bounds_match_numpy_formulas():
  s = np.random.default_rng(0).standard_normal((7, 7)) * 2
  ref = np_bounds(s)
  got = jax.jit(lambda s: (V.infonce(s), V.nwj(s), V.donsker_varadhan(s)))(
      jnp.asarray(s, jnp.float32))
  np.testing.assert_allclose(np.array(got, np.float64), [ref["infonce"], ref["nwj"], ref["dv"]],
                             rtol=1e-5)
  big = jnp.asarray(np.random.default_rng(1).standard_normal((4, 64, 64)) * 50, jnp.float32)
  big = big + 200 * jnp.eye(64)  # a critic that singles out every positive pair
  assert float(jnp.max(jax.vmap(V.infonce)(big))) <= np.log(64) + 1e-6
  with pytest.raises(InvjaxError, match="square"):
    V.infonce(jnp.zeros((3, 4)))


def test_optimal_critic_bounds_against_closed_form():
  # small MI (0.144 nats << log 1024): InfoNCE with the optimal critic is close to the truth
  x, y, true = gaussians(0, 4096, 1, 0.5)
  infonce, nwj, dv = jax.jit(V.infonce), jax.jit(V.nwj), jax.jit(V.donsker_varadhan)
  vals = [float(infonce(jnp.asarray(optimal_scores(x[i:i + 1024], y[i:i + 1024], 0.5),
                                    jnp.float32))) for i in range(0, 4096, 1024)]
  assert abs(np.mean(vals) - true) < 0.02, (vals, true)
  # NWJ with critic 1 + log ratio and DV with the log ratio are tight in expectation
  x, y, true = gaussians(1, 4096, 2, 0.8)
  s = [optimal_scores(x[i:i + 1024], y[i:i + 1024], 0.8) for i in range(0, 4096, 1024)]
  v_nwj = np.mean([float(nwj(jnp.asarray(v + 1.0, jnp.float32))) for v in s])
  v_dv = np.mean([float(dv(jnp.asarray(v, jnp.float32))) for v in s])
  assert abs(v_nwj - true) < 0.05 * true and abs(v_dv - true) < 0.05 * true, (v_nwj, v_dv, true)
  # large MI (19.6 nats): InfoNCE saturates at log n and never exceeds it
  x, y, true = gaussians(2, 128, 10, 0.99)
  nce = float(infonce(jnp.asarray(optimal_scores(x, y, 0.99), jnp.float32)))
  assert np.log(128) - 0.3 < nce <= np.log(128) + 1e-6 < true


def test_mine_loss_gradient_is_the_ema_corrected_one():
  rng = np.random.default_rng(3)
  s1, s2 = rng.standard_normal((2, 6, 6)).astype(np.float32)
  a, n = 0.1, 6
  off = ~np.eye(n, dtype=bool)
  grad = jax.jit(jax.grad(lambda s, e: V.mine_loss(s, e, ema_rate=a)[0]))
  (loss1, (dv1, ema1)) = jax.jit(lambda s, e: V.mine_loss(s, e, ema_rate=a))(s1, V.mine_ema_init())
  np.testing.assert_allclose(float(loss1), -np_bounds(s1.astype(np.float64))["dv"], rtol=1e-5)
  np.testing.assert_allclose(float(dv1), np_bounds(s1.astype(np.float64))["dv"], rtol=1e-5)
  m1, m2 = np.exp(s1[off]).mean(), np.exp(s2[off]).mean()
  # step 1: the debiased average is this batch's mean e^T, so the gradient is the plain DV one
  g1 = np.asarray(grad(s1, V.mine_ema_init()))
  np.testing.assert_allclose(g1, -np.eye(n) / n + off * np.exp(s1) / (n * (n - 1) * m1),
                             rtol=1e-4, atol=1e-7)
  # step 2: the denominator is the debiased moving average of both batches' means
  ema_hat = ((1 - a) * a * m1 + a * m2) / (1 - (1 - a) ** 2)
  g2 = np.asarray(grad(s2, ema1))
  np.testing.assert_allclose(g2, -np.eye(n) / n + off * np.exp(s2) / (n * (n - 1) * ema_hat),
                             rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("bound", ["infonce", "nwj", "mine"])
def test_trained_bounds_near_true_mi(bound):
  # I = 1.02 nats (d = 2, rho = 0.8), < log(128) - 1: every bound within 15% after 300 steps
  x, y, true = gaussians(4, 6000, 2, 0.8)
  critic = critics.ConcatCritic(hidden=(32,))
  r = V.train_critic(critic, x[:4000], y[:4000], key=jax.random.PRNGKey(1), bound=bound,
                     num_steps=300, batch_size=128, learning_rate=3e-3, x_test=x[4000:],
                     y_test=y[4000:])
  assert r.train_bounds.shape == (300,) and r.test_bounds.shape == (15,)
  np.testing.assert_allclose(V.evaluate_bound(critic, r.params, x[4000:], y[4000:], bound=bound,
                                              batch_size=128), r.test_bounds, rtol=1e-4,
                             atol=1e-5)
  assert abs(float(r.estimate) - true) < 0.15 * true, (bound, float(r.estimate), true)
  if bound == "infonce":
    assert float(jnp.max(r.test_bounds)) <= np.log(128) + 1e-5


def test_train_critic_input_errors():
  x = np.zeros((100, 2), np.float32)
  with pytest.raises(InvjaxError, match="bound must be"):
    V.train_critic(critics.SeparableCritic(), x, x, key=jax.random.PRNGKey(0), bound="jsd")
  with pytest.raises(InvjaxError, match="same number of rows"):
    V.train_critic(critics.SeparableCritic(), x, x[:50], key=jax.random.PRNGKey(0))
  with pytest.raises(InvjaxError, match="NaN"):
    V.train_critic(critics.SeparableCritic(), x + np.nan, x, key=jax.random.PRNGKey(0))
  with pytest.raises(InvjaxError, match="batch_size=128"):
    V.train_critic(critics.SeparableCritic(), x, x, key=jax.random.PRNGKey(0))
