"""Invertibility diagnostics against dense Jacobians (jax.jacfwd + numpy SVD) and broken inverses."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax import flows
from invjax._src.checks import InvjaxError
from invjax.robust import invertibility

SHAPE = (4, 4, 2)  # D = 32: dense Jacobians are 32 x 32


@pytest.fixture(scope="module")
def glow_report():
  """A tiny Glow classifier, its variables, test points and a report with converged bounds."""
  glow = flows.Glow(SHAPE, num_levels=1, num_steps=1, hidden=4)
  clf = flows.make_classifier(glow, 2, SHAPE, head="identity_slice")
  x = jax.random.uniform(jax.random.key(0), (3,) + SHAPE)
  variables = jax.jit(clf.init)(jax.random.key(1), x - 0.5)
  adv = jnp.clip(x + 0.1 * jnp.sign(jax.random.normal(jax.random.key(2), x.shape)), 0, 1)
  report = invertibility.invertibility_report(
      clf, variables, x, key=jax.random.key(3), adversarial=adv, ood=("uniform", "constant"),
      input_offset=-0.5, num_iters=200, batch_size=3)
  return clf, variables, x, report


def test_bounds_match_singular_values_of_dense_jacobian(glow_report):
  clf, variables, x, report = glow_report
  encode, _ = invertibility.codec(clf, variables, input_offset=-0.5)
  d = int(np.prod(SHAPE))
  test = report.get("test")
  j_enc = np.asarray(jax.jit(jax.vmap(jax.jacfwd(lambda v: encode(v[None])[0])))(x))
  j_enc = j_enc.reshape(-1, d, d).astype(np.float64)
  s_enc = np.linalg.svd(j_enc, compute_uv=False)  # [N, d], descending
  # the inverse's dense Jacobian is J_enc^-1 (inverse function theorem): its largest
  # singular value is 1 / sigma_min(J_enc)
  s_dec = np.linalg.svd(np.linalg.inv(j_enc), compute_uv=False)
  np.testing.assert_allclose(s_dec[:, 0], 1 / s_enc[:, -1], rtol=1e-6)
  # lower bounds, converged: within 1% below the largest singular value, never above
  assert np.all(test.forward_lipschitz <= s_enc[:, 0] * (1 + 1e-4))
  assert np.all(test.forward_lipschitz >= s_enc[:, 0] * 0.99)
  assert np.all(test.inverse_lipschitz <= s_dec[:, 0] * (1 + 1e-4))
  assert np.all(test.inverse_lipschitz >= s_dec[:, 0] * 0.99)


def test_glow_reconstructs_every_set(glow_report):
  _, _, _, report = glow_report
  assert [s.name for s in report.sets] == ["test", "adversarial", "uniform", "constant"]
  for s in report.sets:
    assert s.reconstruction_error.shape == (3,)
    assert np.max(s.reconstruction_error) < 1e-5, s.name
    assert not np.any(s.non_invertible), s.name
  md = report.markdown()
  assert md.count("\n| ") == 4 and "| test | 3 |" in md


def _dense_iresnet(max_iter):
  return flows.IResNet(kind="dense", stages=(1,), hidden=16, kernel_sizes=(1, 1), coeff=0.97,
                       logdet="none", inverse_max_iter=max_iter, inverse_warn=False)


def test_truncated_fixed_point_inverse_is_flagged():
  x = jax.random.uniform(jax.random.key(0), (6, 8))
  converged = _dense_iresnet(100)
  variables = jax.jit(converged.init)(jax.random.key(1), x)
  report = invertibility.invertibility_report(_dense_iresnet(1), variables, x,
                                              key=jax.random.key(2), ood=None, num_iters=5)
  broken = report.get("test")
  assert np.all(broken.reconstruction_error > invertibility.RECONSTRUCTION_TOL)
  assert np.all(broken.non_invertible)
  # the reference: one fixed-point step from x0 = y is y - g(y) = 2 y - (y + g(y)), by hand
  one_step = jax.jit(lambda z: 2 * z - converged.apply(variables, z, method="transform"))
  z, _ = jax.jit(converged.apply)(variables, x)
  np.testing.assert_allclose(broken.reconstruction_error,
                             np.max(np.abs(one_step(z) - x), axis=1), rtol=1e-4, atol=1e-6)


class _Scale(nn.Module):
  """y = s * x: Lipschitz s forward, 1 / s inverse."""
  s: float

  def __call__(self, x):
    return x * self.s, jnp.full((x.shape[0],), x[0].size * np.log(self.s))

  def inverse(self, y):
    return y / self.s, jnp.full((y.shape[0],), -y[0].size * np.log(self.s))


@pytest.mark.parametrize("s, flagged", [(0.5, False), (1e-6, True)])
def test_exploding_inverse_lipschitz_is_flagged(s, flagged):
  x = jax.random.uniform(jax.random.key(0), (4, 2, 2, 1))
  report = invertibility.invertibility_report(_Scale(s), {}, x, key=jax.random.key(1),
                                              ood=("constant",), num_iters=3)
  for d in report.sets:
    np.testing.assert_allclose(d.forward_lipschitz, s, rtol=1e-5)
    np.testing.assert_allclose(d.inverse_lipschitz, 1 / s, rtol=1e-5)
    assert np.all(d.non_invertible == flagged)
  assert report.summary()[1]["set"] == "constant"


def test_ood_images_and_the_fallback_message(tmp_path):
  key = jax.random.key(0)
  u = invertibility.load_ood_images("uniform", 5, key=key, image_shape=(4, 4, 3))
  c = np.asarray(invertibility.load_ood_images("constant", 5, key=key, image_shape=(4, 4, 3)))
  assert u.shape == c.shape == (5, 4, 4, 3) and 0 <= float(u.min()) and float(u.max()) < 1
  np.testing.assert_array_equal(c, np.broadcast_to(c[:, :1, :1], c.shape))
  assert len(np.unique(c[:, 0, 0, 0])) == 5
  with pytest.raises(InvjaxError, match=r"'svhn_cropped' is not (available|importable)|"
                                        r"tensorflow-datasets is not importable"):
    invertibility.load_ood_images("svhn", 5, key=key, data_dir=str(tmp_path))
  with pytest.warns(UserWarning, match="using 'uniform' images instead"):
    fb = invertibility.load_ood_images("svhn", 5, key=key, data_dir=str(tmp_path),
                                       image_shape=(4, 4, 3), fallback="uniform")
  np.testing.assert_array_equal(fb, u)
  report = invertibility.invertibility_report(_Scale(0.5), {}, u, key=key, ood=("svhn",),
                                              data_dir=str(tmp_path), num_iters=2)
  assert [s.name for s in report.sets] == ["test"]
  assert report.skipped[0][0] == "svhn" and "never downloaded" in report.skipped[0][1]
  assert "Skipped svhn" in report.markdown()
  with pytest.raises(InvjaxError, match="unknown OOD kind"):
    invertibility.load_ood_images("imagenet", 5, key=key)


def test_pgd_examples_attack_the_classifier():
  clf = flows.make_classifier(_Scale(0.5), 2, (2, 2, 1), head="identity_slice")
  x = jax.random.uniform(jax.random.key(0), (4, 2, 2, 1))
  variables = clf.init(jax.random.key(1), x)
  logits_fn = invertibility.logits_function(clf, variables, input_offset=-0.5)
  np.testing.assert_allclose(logits_fn(x), 0.5 * (x.reshape(4, -1)[:, :2] - 0.5), rtol=1e-6)
  y = jnp.argmax(logits_fn(x), -1)
  res = invertibility.pgd_examples(clf, variables, x, y, key=jax.random.key(0), epsilon=0.5,
                                   num_steps=5, input_offset=-0.5)
  assert res.x_adv.shape == x.shape and float(jnp.max(jnp.abs(res.x_adv - x))) <= 0.5 + 1e-6
  np.testing.assert_array_equal(res.success, jnp.argmax(logits_fn(res.x_adv), -1) != y)
  assert bool(jnp.all(res.success))  # eps 0.5 on [0, 1] pixels always swaps two logits
  with pytest.raises(InvjaxError, match="invertible classifier"):
    invertibility.pgd_examples(_Scale(0.5), {}, x, y, key=jax.random.key(0))
