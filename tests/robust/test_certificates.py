"""Certificates: the torus bound of a convolution against dense-Jacobian SVDs, the certified
constant against `local_lipschitz`, radii and accuracies against a hand computation, and
soundness: on a model trained with the Lipschitz-margin loss, PGD-L2 and APGD-L2 never change
a certified prediction inside 0.99x its radius, and do at 3x."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from invjax import InvjaxError
from invjax import attacks
from invjax import robust
from invjax.robust.certificates import (certified_lipschitz, certify, conv_norm_bound,
                                        latent_to_image_lower_bound, plot_certified_curve)
from invjax.robust import margin_training
from invjax.train import recipes

SHAPE = (4, 4, 2)
_DN = ("NHWC", "HWIO", "NHWC")


def _dense_sv(fn, shape):
  d = int(np.prod(shape))
  jac = jax.jacfwd(lambda v: fn(v.reshape((1,) + shape)).reshape(-1))(jnp.zeros(d))
  return np.linalg.svd(np.asarray(jac, np.float64), compute_uv=False)[0]


def test_torus_bound_is_the_circular_norm_and_bounds_every_padding():
  h, w, cin, cout, k = 5, 4, 2, 3, 3
  kernel = jax.random.normal(jax.random.PRNGKey(0), (k, k, cin, cout))
  bound = conv_norm_bound(kernel, (h, w))
  # the circular correlation on the (h + k - 1) x (w + k - 1) torus: wrap-padded VALID conv
  n1, n2 = h + k - 1, w + k - 1
  circ = lambda x: jax.lax.conv_general_dilated(
      jnp.pad(x, ((0, 0), (0, k - 1), (0, k - 1), (0, 0)), mode="wrap"), kernel, (1, 1),
      "VALID", dimension_numbers=_DN)
  np.testing.assert_allclose(bound, _dense_sv(circ, (n1, n2, cin)), rtol=1e-5)
  for strides, padding in [((1, 1), "SAME"), ((1, 1), "VALID"), ((2, 2), "SAME"),
                           ((1, 2), ((2, 2), (0, 1))), ((1, 1), ((4, 3), (1, 5)))]:
    conv = lambda x: jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                                  dimension_numbers=_DN)
    assert _dense_sv(conv, (h, w, cin)) <= bound * (1 + 1e-5), (strides, padding)


def test_torus_bound_is_tight_on_larger_images():
  kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 2, 2))
  conv = lambda x: jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                                dimension_numbers=_DN)
  exact = _dense_sv(conv, (16, 16, 2))
  assert exact <= conv_norm_bound(kernel, (16, 16)) <= 1.05 * exact


def _model(head="pooled", num_classes=3, **kw):
  spec = recipes.classifier_spec(
      {"name": "lipschitz_resnet", "stages": (1, 1), "hidden": 4, "coeff": 0.8, **kw},
      num_classes=num_classes, image_shape=SHAPE, head=head)
  return recipes.build_classifier(spec)


def test_certified_constant_above_local_lipschitz_and_certify_by_hand(tmp_path):
  model = _model()
  x = jax.random.uniform(jax.random.PRNGKey(2), (8,) + SHAPE)
  v = model.init(jax.random.PRNGKey(3), x)
  cert = certified_lipschitz(model, v)
  fn = lambda u: model.apply(v, u)[0]
  local = np.asarray(robust.local_lipschitz(fn, x, key=jax.random.PRNGKey(4), num_iters=50))
  assert np.all(local <= cert.lipschitz * (1 + 1e-5)), (local, cert.lipschitz)
  assert np.max(local) > 0.3 * cert.lipschitz   # and not vacuous on this small model
  y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
  radii = (0.0, 0.05, 0.2)
  c = certify(model, v, x, y, radii, batch_size=3)
  logits = np.asarray(fn(x), np.float64)
  others = np.where(np.eye(3)[y] > 0, -np.inf, logits)
  margin = logits[np.arange(8), y] - others.max(1)
  radius = np.where(margin > 0, margin / (np.sqrt(2) * cert.lipschitz), 0.0)
  np.testing.assert_allclose(c.radius, radius, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(c.correct, logits.argmax(1) == y)
  np.testing.assert_allclose(c.certified_accuracy,
                             [np.mean((margin > 0) & (radius >= r)) for r in radii])
  path = plot_certified_curve(str(tmp_path / "curve.png"), {"lipschitz": (c.radius, c.correct)},
                              marks=(0.05,))
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_an_iresnet_classifier_is_certified_too():
  spec = recipes.classifier_spec(dict(name="iresnet", stages=(1,), hidden=4, kernel_sizes=(3,),
                                      coeff=0.7, logdet="none"), num_classes=2,
                                 image_shape=SHAPE, head="slice")
  model = recipes.build_classifier(spec)
  x = jax.random.uniform(jax.random.PRNGKey(8), (1,) + SHAPE)
  v = model.init(jax.random.PRNGKey(9), x)
  cert = certified_lipschitz(model, v)
  np.testing.assert_allclose(cert.blocks, [1.0 + cert.branches[0]])      # x + g(x): no scale
  assert _dense_sv(lambda u: model.apply(v, u)[0], SHAPE) <= cert.lipschitz * (1 + 1e-5)


def test_latent_to_image_lower_bound_holds_on_the_encoder():
  model = _model()
  x = jax.random.uniform(jax.random.PRNGKey(5), (16,) + SHAPE)
  v = model.init(jax.random.PRNGKey(6), x)
  l_e = certified_lipschitz(model, v).encoder
  x2 = x + 0.1 * jax.random.normal(jax.random.PRNGKey(7), x.shape)
  enc = lambda u: np.asarray(model.apply(v, u, method="encode"), np.float64)
  dz = np.linalg.norm(enc(x) - enc(x2), axis=1)
  dx = np.linalg.norm(np.asarray(x - x2, np.float64).reshape(16, -1), axis=1)
  bound = latent_to_image_lower_bound(dz, l_e)
  np.testing.assert_allclose(bound, dz / l_e)
  assert np.all(dx >= bound * (1 - 1e-5))
  with pytest.raises(InvjaxError, match="encoder_lipschitz"):
    latent_to_image_lower_bound(dz, 0.0)


def _easy_data(n, seed, direction):
  r = np.random.default_rng(seed)
  y = r.integers(0, 2, n)
  x = 0.5 + 0.6 * (2 * y - 1)[:, None, None, None] * direction + 0.03 * r.normal(
      size=(n,) + SHAPE)
  return jnp.asarray(np.clip(x, 0, 1), jnp.float32), jnp.asarray(y, jnp.int32)


def test_soundness_attacks_never_break_a_certificate():
  """Two classes 1.2 apart along a direction; one certified block trained 40 steps with the
  margin loss. Below the certified radius no attack may succeed (the theorem). At 3x the radius
  they should: for two classes the sqrt(2) of the pairwise bound is attained by the
  near-antisymmetric head the margin loss trains, and a single 1-Lipschitz block with a branch
  bound c = 0.64 moves the margin at a rate >= (1 - c) / (1 + c) ~ 0.22 of its bound in any
  direction, and on this near-linear problem at nearly the full rate, so a 3x budget crosses the
  boundary for most points (the box [0, 1] is far: pixels lie in about [0.3, 0.7])."""
  rng = np.random.default_rng(0)
  direction = rng.normal(size=SHAPE)
  direction /= np.linalg.norm(direction)
  x_train, y_train = _easy_data(128, 1, direction)
  x_test, y_test = _easy_data(16, 2, direction)
  model = _model(head="slice", num_classes=2, stages=(1,), hidden=8, kernel_sizes=(3, 1))
  v = model.init(jax.random.PRNGKey(0), x_train[:2] - 0.5)
  params, state = v["params"], {"spectral": v["spectral"]}
  opt = optax.adam(1e-2)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, state, opt_state):
    def loss_fn(p):
      (logits, _, _), new = model.apply({"params": p, **state}, x_train - 0.5,
                                        mutable=["spectral"])
      lip = margin_training.lipschitz_estimate(model, {"params": p, **new})
      return margin_training.margin_loss(logits, y_train, lipschitz=lip, epsilon=0.3), new
    (_, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new, opt_state

  for _ in range(40):
    params, state, opt_state = step(params, state, opt_state)
  v = {"params": params, **state}
  c = certify(model, v, x_test, y_test, 0.1, input_offset=-0.5)
  ok = c.radius > 0
  assert ok.sum() >= 12, c.radius                    # most test points are certified
  fn = lambda u: model.apply(v, u - 0.5)[0]
  xs, ys, rs = x_test[ok], y_test[ok], jnp.asarray(c.radius[ok], jnp.float32)
  for mult, check in [(0.99, lambda s: not np.any(s)), (3.0, lambda s: np.mean(s) >= 0.5)]:
    pgd = attacks.pgd(fn, xs, ys, key=jax.random.PRNGKey(1), epsilon=mult * rs, num_steps=30,
                      norm="l2", num_restarts=5)
    apgd = attacks.apgd(fn, xs, ys, key=jax.random.PRNGKey(2), epsilon=mult * rs,
                        num_steps=30, norm="l2", num_restarts=2)
    assert np.all(np.asarray(pgd.l2) <= mult * np.asarray(rs) * (1 + 1e-4))
    assert check(np.asarray(pgd.success)), (mult, pgd.success)
    assert check(np.asarray(apgd.success)), (mult, apgd.success)
