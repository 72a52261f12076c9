"""Passeurs poisoning steps, checked against closed-form gradients of a linear feature map."""
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src.checks import InvjaxError
from invjax.passeurs import poison

H = W = 4
C = 3
D = 6
K = 3


def linear_features(params, x01):
  """f(x) = vec(x) @ A: the gradient of anything in f has a closed form A^T g."""
  return x01.reshape(x01.shape[0], -1) @ params


@pytest.fixture(scope="module")
def problem():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((H * W * C, D)).astype(np.float32)
  x = rng.integers(1, 255, size=(10, H, W, C)).astype(np.uint8)
  y = rng.integers(0, K, size=10).astype(np.int32)
  w = {"w": rng.standard_normal((K, D)).astype(np.float32) * 0.3,
       "b": rng.standard_normal(K).astype(np.float32) * 0.1}
  return a, x, y, w


def _scores(a, x, w):
  return (x.reshape(len(x), -1).astype(np.float64) / 255.0) @ a @ w["w"].T + w["b"]


def test_sign_step_is_minus_sign_of_closed_form_ovr_hinge_gradient(problem):
  a, x, y, w = problem
  out = poison.sign_step(linear_features, jnp.asarray(a), x, y, w, batch_size=4)
  assert out.dtype == np.uint8 and out.shape == x.shape
  # d/ds_j sum_j max(0, 1 - t_j s_j)^2 = -2 t_j max(0, 1 - t_j s_j); d s / d x01 = W A^T.
  t = 2.0 * np.eye(K)[y] - 1.0
  g_s = -2.0 * t * np.maximum(0.0, 1.0 - t * _scores(a, x, w))
  g_x = (g_s @ w["w"] @ a.T).reshape(x.shape)
  expected = np.clip(x.astype(np.int16) - np.sign(g_x), 0, 255)
  np.testing.assert_array_equal(out, expected)
  assert poison.linf(out, x) == 1


def test_multiclass_margin_step_matches_closed_form(problem):
  a, x, y, w = problem
  out = poison.sign_step(linear_features, jnp.asarray(a), x, y, w, margin="multiclass",
                         batch_size=16)
  s = _scores(a, x, w)
  s_other = s.copy()
  s_other[np.arange(len(y)), y] = -np.inf
  j = s_other.argmax(1)
  g_x = (-(w["w"][y] - w["w"][j]) @ a.T).reshape(x.shape)  # gradient of -margin
  np.testing.assert_array_equal(out, np.clip(x.astype(np.int16) - np.sign(g_x), 0, 255))


def test_steps_clip_to_valid_pixels_and_bound_linf(problem):
  a, _, y, w = problem
  x = np.zeros((10, H, W, C), np.uint8)
  x[::2] = 255
  out = poison.sign_poison(linear_features, jnp.asarray(a), x, y, w, steps=3, batch_size=4)
  assert out.dtype == np.uint8
  assert poison.linf(out, x) <= 3
  seen = []
  x2 = poison.sign_poison(linear_features, jnp.asarray(a), problem[1], y, w, steps=3,
                          callback=lambda k, xk: seen.append((k, poison.linf(xk, problem[1]))))
  assert [k for k, _ in seen] == [1, 2, 3] and all(l <= k for k, l in seen)
  # The loss under w_target goes down (closed-form scores of the linear map).
  loss = lambda z: np.sum(np.maximum(0, 1 - (2 * np.eye(K)[y] - 1) * _scores(a, z, w)) ** 2)
  assert loss(x2) < loss(problem[1])


def test_rotation_targets_rotate_u_toward_v():
  u = np.array([1.0, 0.0, 0.0], np.float32)
  v = np.array([0.0, 1.0, 0.0], np.float32)
  w_train = {"w": np.stack([2 * u, v])}
  w_target = {"w": np.stack([3 * v, u])}
  f = np.array([[1.0, 0.0, 5.0], [0.0, 0.0, 1.0]], np.float32)
  t = poison.rotation_targets(f, np.array([0, 0]), w_train, w_target, delta=0.1)
  # f = u -> u + delta v; a vector orthogonal to the (u, v) plane is unchanged.
  np.testing.assert_allclose(t, [[1.0, 0.1, 5.0], [0.0, 0.0, 1.0]], atol=1e-6)
  with pytest.raises(InvjaxError, match="delta"):
    poison.rotation_targets(f, np.array([0, 0]), w_train, w_target, delta=-1.0)


def test_rotation_step_matches_closed_form(problem):
  a, x, _, _ = problem
  target = np.random.default_rng(1).standard_normal((len(x), D)).astype(np.float32)
  out = poison.rotation_step(linear_features, jnp.asarray(a), x, target, batch_size=3)
  f = (x.reshape(len(x), -1).astype(np.float64) / 255.0) @ a
  g_x = (2 * (f - target) @ a.T).reshape(x.shape)
  np.testing.assert_array_equal(out, np.clip(x.astype(np.int16) - np.sign(g_x), 0, 255))


def test_batched_apply_pads_and_trims():
  calls = []
  def fn(xb):
    calls.append(xb.shape[0])
    return xb * 2, xb[:, :1]
  x = np.arange(14.0).reshape(7, 2)
  a, b = poison.batched_apply(fn, [x], 3)
  np.testing.assert_array_equal(a, x * 2)
  np.testing.assert_array_equal(b, x[:, :1])
  assert calls == [3, 3, 3]  # the last batch of 1 was padded to 3


def test_errors_name_the_problem(problem):
  a, x, y, w = problem
  with pytest.raises(InvjaxError, match="uint8"):
    poison.sign_step(linear_features, a, x.astype(np.float32), y, w)
  with pytest.raises(InvjaxError, match="margin"):
    poison.sign_step(linear_features, a, x, y, w, margin="hinge3")
  with pytest.raises(InvjaxError, match=r"y must lie in \[0, 3\)"):
    poison.sign_step(linear_features, a, x, y + 5, w)
  with pytest.raises(InvjaxError, match="steps"):
    poison.sign_poison(linear_features, a, x, y, w, steps=0)
  with pytest.raises(InvjaxError, match="target_features"):
    poison.rotation_step(linear_features, a, x, np.zeros((3, D), np.float32))


def _closed_form_grad(a, x, y, w):
  t = 2.0 * np.eye(K)[y] - 1.0
  g_s = -2.0 * t * np.maximum(0.0, 1.0 - t * _scores(a, x, w))
  return (g_s @ w["w"] @ a.T).reshape(x.shape)


def test_momentum_steps_follow_the_accumulated_normalised_gradient(problem):
  a, x, y, w = problem
  # Scores large enough that the hinge stays active over both steps.
  w_big = {"w": w["w"] * 20.0, "b": w["b"]}
  x1, v1 = poison.sign_step_momentum(linear_features, jnp.asarray(a), x, y, w_big, None,
                                     momentum=0.7, batch_size=4)
  np.testing.assert_array_equal(x1, poison.sign_step(linear_features, jnp.asarray(a), x, y,
                                                     w_big, batch_size=4))
  x2, v2 = poison.sign_step_momentum(linear_features, jnp.asarray(a), x1, y, w_big, v1,
                                     momentum=0.7, batch_size=4)
  # numpy reference: v = 0.7 v + g / mean|g| per image, x -= sign(v).
  # (an image whose hinge is inactive for every class has g = 0 and stays put)
  norm = lambda g: g / np.maximum(np.abs(g).reshape(len(g), -1).mean(1), 1e-30).reshape(
      -1, 1, 1, 1)
  ref_v1 = norm(_closed_form_grad(a, x, y, w_big))
  ref_v2 = 0.7 * ref_v1 + norm(_closed_form_grad(a, x1, y, w_big))
  np.testing.assert_allclose(v2, ref_v2, rtol=1e-3, atol=1e-3)
  np.testing.assert_array_equal(
      x2, np.clip(x1.astype(np.int16) - np.sign(ref_v2), 0, 255).astype(np.uint8))
  assert poison.linf(x2, x) <= 2
  # momentum=0 in sign_poison is plain sign steps; > 0 goes through the velocity.
  plain = poison.sign_poison(linear_features, jnp.asarray(a), x, y, w_big, steps=2,
                             batch_size=4)
  mom = poison.sign_poison(linear_features, jnp.asarray(a), x, y, w_big, steps=2,
                           batch_size=4, momentum=0.7)
  np.testing.assert_array_equal(mom, x2)
  assert plain.shape == mom.shape
  with pytest.raises(InvjaxError, match="momentum"):
    poison.sign_step_momentum(linear_features, jnp.asarray(a), x, y, w, None, momentum=-1.0)
  with pytest.raises(InvjaxError, match="velocity"):
    poison.sign_step_momentum(linear_features, jnp.asarray(a), x, y, w,
                              np.zeros((2, 2), np.float32))
