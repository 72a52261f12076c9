"""Metameric (invariance) attacks: x1's logits are kept exactly, x2's nuisance too."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax.attacks import invariance
from invjax._src.checks import InvjaxError

D, K, B = 10, 3, 5


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  m = (np.eye(D) + 0.3 * rng.standard_normal((D, D))).astype(np.float32)
  minv = np.linalg.inv(m).astype(np.float32)
  a = rng.standard_normal((D, K)).astype(np.float32)
  b = rng.standard_normal(K).astype(np.float32)
  x1 = rng.uniform(0, 1, (B, D)).astype(np.float32)
  x2 = rng.uniform(0, 1, (B, D)).astype(np.float32)
  return m, a, b, x1, x2, (lambda v: v @ m.T), (lambda z: z @ minv.T)


def test_row_space_split_keeps_logits_and_nuisance():
  m, a, b, x1, x2, enc, dec = _problem()
  res = invariance.metameric_attack(enc, dec, (a, b), x1, x2)
  z1, z2 = x1 @ m.T, x2 @ m.T
  # Independent reference: orthogonal projector on range(A) from numpy's lstsq / pinv.
  p = a @ np.linalg.pinv(a)
  np.testing.assert_allclose(res.z_meta, z1 @ p + z2 @ (np.eye(D) - p), atol=1e-5)
  np.testing.assert_allclose(res.logits_meta, z1 @ a + b, atol=1e-4)
  np.testing.assert_allclose(res.logits_x1, z1 @ a + b, atol=1e-5)
  assert bool(res.same_prediction.all())
  x_meta = np.asarray(res.x_meta)
  np.testing.assert_allclose(res.l2_to_x2, np.linalg.norm(x_meta - x2, axis=1), rtol=1e-5)
  np.testing.assert_allclose(res.linf_to_x1, np.abs(x_meta - x1).max(1), rtol=1e-5)
  # The metamer differs from x1 by a head-invisible latent change only.
  dz = np.asarray(res.z_meta) - z1
  np.testing.assert_allclose(dz @ a, 0.0, atol=1e-4)
  np.testing.assert_array_equal(res.in_range, np.all((x_meta >= 0) & (x_meta <= 1), axis=1))


def test_identity_slice_with_model():
  from invjax.flows.classifier import InvertibleClassifier  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class LinearFlow(nn.Module):
    @nn.compact
    def __call__(self, x):
      return x @ self._m().T, jnp.zeros(x.shape[:1])

    def _m(self):
      return self.param("m", lambda k, s: jnp.eye(s[0]) + 0.3 * jax.random.normal(k, s), (D, D))

    @nn.compact
    def inverse(self, z):
      return jnp.linalg.solve(self._m(), z.T).T, jnp.zeros(z.shape[:1])

  model = InvertibleClassifier(flow=LinearFlow(), num_classes=K, head="identity_slice",
                               latent_shape=(D,))
  _, _, _, x1, x2, _, _ = _problem(1)
  variables = jax.jit(model.init)(jax.random.key(0), x1)
  res = invariance.metameric_attack_from_model(model, variables, x1, x2, split="identity_slice")
  m = np.asarray(variables["params"]["flow"]["m"])
  z1, z2 = x1 @ m.T, x2 @ m.T
  np.testing.assert_allclose(res.z_meta[:, :K], z1[:, :K], atol=1e-6)
  np.testing.assert_allclose(res.z_meta[:, K:], z2[:, K:], atol=1e-6)
  np.testing.assert_allclose(res.logits_meta, z1[:, :K], atol=1e-4)
  # Row-space split through the model's linear head gives the same metamer here.
  res_rs = invariance.metameric_attack_from_model(model, variables, x1, x2)
  np.testing.assert_allclose(res_rs.x_meta, res.x_meta, atol=1e-4)


def test_label_agreement_counts():
  rng = np.random.default_rng(0)
  x = rng.uniform(-0.5, 1.5, (7, 4)).astype(np.float32)
  logits_fn = lambda v: jnp.stack([v[:, 0], v[:, 1], 0.5 * jnp.ones(v.shape[0])], axis=1)
  pred = np.argmax(np.stack([np.clip(x[:, 0], 0, 1), np.clip(x[:, 1], 0, 1),
                             0.5 * np.ones(7)], 1), 1)
  y2 = pred.copy().astype(np.int32)
  y2[:3] = (y2[:3] + 1) % 3
  y1 = np.zeros(7, np.int32)
  f2, f1 = invariance.label_agreement(logits_fn, x, y2, y1, batch_size=3)
  assert f2 == pytest.approx(4 / 7)
  assert f1 == pytest.approx(np.mean(pred == 0))


def test_bad_inputs():
  _, a, b, x1, x2, enc, dec = _problem()
  with pytest.raises(InvjaxError, match="same shape"):
    invariance.metameric_attack(enc, dec, (a, b), x1, x2[:-1])
  with pytest.raises(InvjaxError, match="linear head"):
    invariance.metameric_attack(enc, dec, lambda z: z[:, :K], x1, x2)
  bad = x1.copy()
  bad[1, 2] = np.nan
  with pytest.raises(InvjaxError, match="NaN"):
    invariance.metameric_attack(enc, dec, (a, b), bad, x2)
  with pytest.raises(InvjaxError, match="num_class_dims"):
    invariance.metameric_attack(enc, dec, (a, b), x1, x2, split="identity_slice",
                                num_class_dims=D + 1)
  with pytest.raises(InvjaxError, match="y2"):
    invariance.label_agreement(lambda v: v, x1, np.zeros(B + 1, np.int32))


def test_encode_and_decode_of_the_wrong_shape_raise():
  _, a, b, x1, x2, enc, dec = _problem()
  with pytest.raises(InvjaxError, match=r"decode must map the latent \(5, 10\) back to the shape "
                                        r"of x1 \(5, 10\), got \(5, 1, 10\)"):
    invariance.metameric_attack(enc, lambda z: dec(z)[:, None, :], (a, b), x1, x2)
  with pytest.raises(InvjaxError, match="flat latent"):
    invariance.metameric_attack(lambda v: enc(v)[:, :, None], dec, (a, b), x1, x2)
