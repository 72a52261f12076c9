"""Tests for invjax.attacks.gradient against closed forms on a linear model.

For logits = x @ W + b with 2 classes and the [0,1] box inactive, the minimal
adversarial perturbation of x (label y, margin m = |l_1 - l_0|, w = W[:,1] - W[:,0])
is m / ||w||_2 in L2 (along w) and m / ||w||_1 in L_inf (along sign(w)).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax.attacks import cw
from invjax.attacks import gradient
from invjax._src.checks import InvjaxError
from invjax.nets.cnn import SmallCNN


@pytest.fixture(scope="module")
def linear():
  rng = np.random.RandomState(0)
  d, n = 16, 8
  w_mat = rng.randn(d, 2).astype(np.float32)
  b = rng.randn(2).astype(np.float32) * 0.1
  x = rng.uniform(0.35, 0.65, (n, d)).astype(np.float32)
  logits = x @ w_mat + b
  y = np.argmax(logits, 1).astype(np.int32)
  w = (w_mat[:, 1] - w_mat[:, 0]).astype(np.float64)
  m = np.abs(logits[:, 1] - logits[:, 0]).astype(np.float64)
  d2 = m / np.linalg.norm(w)
  dinf = m / np.abs(w).sum()
  # The closed-form minimal points must lie strictly inside the box, else the formula is wrong.
  sign = np.where(y == 0, 1.0, -1.0)[:, None]
  x2 = x + sign * d2[:, None] * w / np.linalg.norm(w)
  xinf = x + sign * dinf[:, None] * np.sign(w)
  assert 0.02 < x2.min() and x2.max() < 0.98 and 0.02 < xinf.min() and xinf.max() < 0.98
  fn = lambda v: v @ jnp.asarray(w_mat) + jnp.asarray(b)
  return dict(fn=fn, x=x, y=y, d2=d2.astype(np.float32), dinf=dinf.astype(np.float32))


def _check_result(res, fn, x, y, *, eps=None, norm=None, targeted=False):
  """Range, budget, distances and success re-evaluated independently."""
  x_adv = np.asarray(res.x_adv)
  assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  delta = (x_adv - x).reshape(len(x), -1).astype(np.float64)
  np.testing.assert_allclose(res.linf, np.abs(delta).max(1), atol=1e-6)
  np.testing.assert_allclose(res.l2, np.linalg.norm(delta, axis=1), rtol=1e-5, atol=1e-6)
  if eps is not None:
    dist = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    assert np.all(dist <= np.broadcast_to(eps, dist.shape) * (1 + 1e-5) + 1e-6)
  pred = np.argmax(np.asarray(fn(jnp.asarray(x_adv))), 1)
  np.testing.assert_array_equal(np.asarray(res.success), pred == y if targeted else pred != y)


def test_cw_l2_finds_closed_form_minimum(linear):
  res = cw.carlini_wagner_l2(linear["fn"], linear["x"], linear["y"], num_steps=200,
                             binary_search_steps=8, learning_rate=1e-2)
  _check_result(res, linear["fn"], linear["x"], linear["y"])
  assert np.all(res.success)
  ratio = np.asarray(res.l2) / linear["d2"]
  assert np.all(ratio >= 1 - 1e-3), ratio  # nothing beats the minimum
  assert np.all(ratio <= 1.03), ratio
  assert 0 < int(res.num_grad_evals) <= 8 * 200


@pytest.mark.parametrize("norm,dist", [("l2", "d2"), ("linf", "dinf")])
def test_pgd_threshold_at_minimal_distance(linear, norm, dist):
  fn, x, y = linear["fn"], linear["x"], linear["y"]
  for scale, expect in ((1.02, True), (0.98, False)):
    eps = scale * linear[dist]  # per-example budget
    res = gradient.pgd(fn, x, y, key=jax.random.PRNGKey(1), epsilon=eps, step_size=0.2 * eps,
                       num_steps=60, norm=norm, random_start=True)
    _check_result(res, fn, x, y, eps=eps, norm=norm)
    assert np.all(np.asarray(res.success) == expect), (norm, scale, res.success)
    if expect:  # early stop: an example stops counting gradients once it is broken
      assert np.all(np.asarray(res.num_grad_evals) < 60)
    else:
      np.testing.assert_allclose(res.l2 if norm == "l2" else res.linf, eps, rtol=1e-4)
      assert np.all(np.asarray(res.num_grad_evals) == 60)


def test_fgsm_linear_threshold(linear):
  fn, x, y = linear["fn"], linear["x"], linear["y"]
  for scale, expect in ((1.02, True), (0.98, False)):
    eps = scale * linear["dinf"]
    res = gradient.fgsm(fn, x, y, epsilon=eps)
    _check_result(res, fn, x, y, eps=eps, norm="linf")
    assert np.all(np.asarray(res.success) == expect)
    assert int(res.num_grad_evals) == 1


def test_pgd_jit_matches_eager_with_traced_epsilon(linear):
  fn, x, y = linear["fn"], linear["x"], linear["y"]
  attack = functools.partial(gradient.pgd, fn, num_steps=10, norm="l2", early_stop=False)
  eps = jnp.float32(0.5)
  eager = attack(x, y, key=jax.random.PRNGKey(2), epsilon=eps)
  jitted = jax.jit(lambda x, y, k, e: attack(x, y, key=k, epsilon=e))(
      x, y, jax.random.PRNGKey(2), eps)
  np.testing.assert_allclose(eager.x_adv, jitted.x_adv, atol=1e-6)
  np.testing.assert_array_equal(eager.success, jitted.success)


def _numpy_init(model, input_shape, seed=0):
  """He-style random variables without compiling `model.init` (compiles are the slow part)."""
  rng = np.random.RandomState(seed)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros(input_shape))
  def fill(s):
    if len(s.shape) == 1:
      return jnp.zeros(s.shape, s.dtype)
    return jnp.asarray(rng.randn(*s.shape) / np.sqrt(np.prod(s.shape[:-1])), s.dtype)
  return jax.tree.map(fill, shapes)


@pytest.fixture(scope="module")
def cnn():
  model = SmallCNN(num_classes=10, widths=(4, 8))
  variables = _numpy_init(model, (1, 8, 8, 3))
  fn = lambda v: model.apply(variables, v)
  x = np.random.RandomState(1).uniform(0, 1, (16, 8, 8, 3)).astype(np.float32)
  x[0, 0, 0] = 0.0  # pixels on the box boundary
  x[1, 0, 0] = 1.0
  y = np.argmax(np.asarray(fn(jnp.asarray(x))), 1).astype(np.int32)
  return fn, x, y


@pytest.mark.parametrize("name,kwargs,norm", [
    ("fgsm", dict(epsilon=0.05), "linf"),
    ("pgd", dict(epsilon=0.03, num_steps=8, norm="linf", early_stop=False), "linf"),
    ("pgd", dict(epsilon=0.3, num_steps=8, norm="l2", num_restarts=2, loss="margin"), "l2"),
    ("cw", dict(num_steps=20, binary_search_steps=3, initial_const=1.0), None),
])
def test_outputs_in_box_and_budget_on_cnn(cnn, name, kwargs, norm):
  fn, x, y = cnn
  res = gradient.ATTACKS[name](fn, x, y, key=jax.random.PRNGKey(3), **kwargs)
  _check_result(res, fn, x, y, eps=kwargs.get("epsilon"), norm=norm)
  assert np.asarray(res.success).any()  # tiny random nets have tiny margins


def test_targeted_pgd_reaches_target(cnn):
  fn, x, y = cnn
  # The runner-up class: a random tiny net cannot reach every class, this one it can.
  target = np.argsort(np.asarray(fn(jnp.asarray(x))), 1)[:, -2].astype(np.int32)
  res = gradient.pgd(fn, x, target, key=jax.random.PRNGKey(4), epsilon=0.5, num_steps=20,
                     norm="linf", targeted=True)
  _check_result(res, fn, x, target, eps=0.5, norm="linf", targeted=True)
  assert np.asarray(res.success).mean() >= 0.5


def test_restarts_keep_earlier_successes(cnn):
  fn, x, y = cnn
  # One tiny step: success comes from the random start, so more restarts break more examples.
  kw = dict(key=jax.random.PRNGKey(5), epsilon=0.5, step_size=1e-4, num_steps=1, norm="linf")
  one = gradient.pgd(fn, x, y, num_restarts=1, **kw)
  four = gradient.pgd(fn, x, y, num_restarts=4, **kw)
  assert np.all(np.asarray(four.success) >= np.asarray(one.success))
  assert np.asarray(four.success).sum() > np.asarray(one.success).sum()


@pytest.mark.parametrize("kwargs,x_fn,y_fn,match", [
    (dict(epsilon=-0.1), None, None, "epsilon must be > 0"),
    (dict(epsilon=float("nan")), None, None, "epsilon must be > 0"),
    (dict(epsilon=0.1), None, lambda y: y[:-1], r"y must have shape \(8,\)"),
    (dict(epsilon=0.1), None, lambda y: y.astype(np.float32), "integer class labels"),
    (dict(epsilon=0.1), None, lambda y: y + 5, r"y must lie in \[0, 2\)"),
    (dict(epsilon=0.1), lambda x: np.where(np.arange(16) == 3, np.nan, x).astype(np.float32),
     None, "NaN"),
    (dict(epsilon=0.1), lambda x: (x * 255).astype(np.uint8), None, "floating-point"),
    (dict(epsilon=0.1), lambda x: x + 1.0, None, r"must lie in \[0.0, 1.0\]"),
    (dict(epsilon=np.ones(3)), None, None, r"epsilon must be a scalar or have shape \(8,\)"),
    (dict(epsilon=0.1, norm="l1"), None, None, "norm must be one of"),
    (dict(epsilon=0.1, num_steps=0), None, None, "num_steps must be a positive int"),
])
def test_bad_inputs_raise(linear, kwargs, x_fn, y_fn, match):
  x = linear["x"] if x_fn is None else x_fn(linear["x"])
  y = linear["y"] if y_fn is None else y_fn(linear["y"])
  with pytest.raises(InvjaxError, match=match):
    gradient.pgd(linear["fn"], x, y, key=jax.random.PRNGKey(0), **kwargs)


def test_nan_logits_and_bad_model_raise(linear):
  x, y = linear["x"], linear["y"]
  nan_fn = lambda v: jnp.where(v[:, :2] > 0.5, jnp.nan, v[:, :2])
  for attack in (lambda f: gradient.fgsm(f, x, y, epsilon=0.1),
                 lambda f: gradient.pgd(f, x, y, key=jax.random.PRNGKey(0), epsilon=0.1),
                 lambda f: cw.carlini_wagner_l2(f, x, y)):
    with pytest.raises(InvjaxError, match="logits_fn returned NaN"):
      attack(nan_fn)
  with pytest.raises(InvjaxError, match=r"logits \[batch, classes\]"):
    gradient.fgsm(lambda v: v.sum(1), x, y, epsilon=0.1)
  with pytest.raises(InvjaxError, match="needs a PRNG key"):
    gradient.pgd(linear["fn"], x, y, key=None, epsilon=0.1)


def test_bad_options_raise(linear):
  fn, x, y = linear["fn"], linear["x"], linear["y"]
  with pytest.raises(InvjaxError, match=r"loss must be one of \('ce', 'margin'\), got 'l1'"):
    gradient.fgsm(fn, x, y, epsilon=0.1, loss="l1")
  with pytest.raises(InvjaxError, match="num_restarts must be a positive int, got 0"):
    gradient.pgd(fn, x, y, key=jax.random.PRNGKey(0), epsilon=0.1, num_restarts=0)
  with pytest.raises(InvjaxError, match="binary_search_steps must be a positive int, got 1.5"):
    cw.carlini_wagner_l2(fn, x, y, binary_search_steps=1.5)
  with pytest.raises(InvjaxError, match="num_steps must be a positive int, got 0"):
    cw.carlini_wagner_l2(fn, x, y, num_steps=0)
  with pytest.raises(InvjaxError, match="initial_const"):
    cw.carlini_wagner_l2(fn, x, y, initial_const=0.0)


@pytest.mark.parametrize("early_stop,num_restarts", [(True, 1), (False, 1), (True, 3)])
def test_unrolled_steps_equal_the_while_loop(cnn, early_stop, num_restarts):
  # The straight-line (CPU) and while_loop (accelerator) versions run the same masked steps.
  fn, x, y = cnn
  kw = dict(key=jax.random.PRNGKey(3), epsilon=4 / 255, num_steps=6, norm="linf",
            early_stop=early_stop, num_restarts=num_restarts)
  looped = gradient.pgd(fn, x, y, unroll=False, **kw)
  unrolled = gradient.pgd(fn, x, y, unroll=True, **kw)
  np.testing.assert_allclose(unrolled.x_adv, looped.x_adv, atol=1e-6)
  np.testing.assert_array_equal(unrolled.success, looped.success)
  np.testing.assert_array_equal(unrolled.num_grad_evals, looped.num_grad_evals)
  assert 0 < np.asarray(looped.success).mean() < 1 or early_stop is False
