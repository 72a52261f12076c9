"""Tests for invjax.attacks.autopgd (APGD, APGD-T) against closed forms on linear models.

For logits z = x @ W + b and an input x of label y, the half-space {z_j >= z_y} is at
L_inf distance m_j / ||w_y - w_j||_1 and L2 distance m_j / ||w_y - w_j||_2 from x
(m_j = z_y - z_j), reached at x -/+ d sign(w_y - w_j) (L_inf) or along w_j - w_y (L2); the
minimal adversarial distance is the smallest of these over j != y when the [0, 1] box is
inactive (inputs in the middle of the box, distances well under 0.5: the fixtures check
that the minimal points lie strictly inside the box). At 0.98x that distance no point of the
ball is misclassified, whatever the attack (a bound); at 1.02x a good attack finds one.

Two models:
  * `rival`: two live classes (0 and 1) and three classes pushed far below (bias -10,
    near-zero weights), so each example has one rival class. CE and DLR ascent then point
    at the nearest boundary; on a model whose classes all compete, maximising CE (or DLR)
    inside the ball need not misclassify (softmax mass spreads over the classes), so the
    1.02x property is a property of the loss, not of APGD, and is not tested there. The
    targeted region {z_t >= z_j for all j} of the rival t equals its half-space at the
    optimum (the far classes stay below; checked), so the targeted minimal distance is the
    same closed form.
  * `multi`: six live classes with random weights, for APGD-T over every target (its
    targeted DLR runs towards the nearest class find the nearest boundary).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src.checks import InvjaxError
from invjax.attacks import autopgd as apgd_lib
from invjax.attacks.autopgd import apgd, apgd_targeted


KEY = jax.random.PRNGKey(0)


def _closed_form(w_mat, b, x):
  """Labels, minimal L_inf / L2 distances, the nearest class, and the minimal points."""
  logits = x.astype(np.float64) @ w_mat + b
  y = np.argmax(logits, 1)
  out = {"y": y.astype(np.int32)}
  for norm, dual in (("linf", 1), ("l2", 2)):
    dist = np.full(logits.shape, np.inf)
    for j in range(w_mat.shape[1]):
      w = w_mat[:, y] - w_mat[:, [j]]  # [d, n]
      m = logits[np.arange(len(x)), y] - logits[:, j]
      with np.errstate(invalid="ignore", divide="ignore"):  # j == y: 0 / 0, masked
        dist[:, j] = np.where(y == j, np.inf, m / np.linalg.norm(w, ord=dual, axis=0))
    near = np.argmin(dist, 1)
    d = dist[np.arange(len(x)), near]
    w = (w_mat[:, near] - w_mat[:, y]).T  # ascent direction of z_near - z_y
    step = np.sign(w) if norm == "linf" else w / np.linalg.norm(w, axis=1, keepdims=True)
    out[norm] = dict(dist=d, near=near.astype(np.int32), point=x + d[:, None] * step)
  for norm in ("linf", "l2"):
    p = out[norm]["point"]
    assert 0.02 < p.min() and p.max() < 0.98, "the box constraint would be active"
  return out


def _model(w_mat, b):
  return lambda v: v @ jnp.asarray(w_mat, jnp.float32) + jnp.asarray(b, jnp.float32)


@pytest.fixture(scope="module")
def rival():
  rng = np.random.RandomState(0)
  d, k = 16, 5
  w_mat = rng.randn(d, k)
  w_mat[:, 2:] *= 0.02
  b = np.zeros(k)
  b[2:] = -10.0
  x = rng.uniform(0.4, 0.6, (400, d))
  s = x @ (w_mat[:, 1] - w_mat[:, 0])
  b[1] = -np.median(s)
  margin = np.abs(s + b[1]) / np.linalg.norm(w_mat[:, 1] - w_mat[:, 0])
  x = x[margin > 0.05][:24].astype(np.float32)  # no example on the boundary
  cf = _closed_form(w_mat, b, x)
  assert set(cf["y"]) == {0, 1} and np.all(cf["linf"]["near"] == 1 - cf["y"])
  for norm in ("linf", "l2"):  # the rival wins over the far classes at the minimal point
    z = cf[norm]["point"] @ w_mat + b
    assert np.all(z[:, 2:].max(1) < z[np.arange(len(x)), 1 - cf["y"]] - 1.0)
  return dict(fn=_model(w_mat, b), x=x, **cf)


@pytest.fixture(scope="module")
def multi():
  rng = np.random.RandomState(1)
  d, k = 20, 6
  w_mat = rng.randn(d, k) * 0.3
  b = rng.randn(k) * 0.1
  x = rng.uniform(0.4, 0.6, (24, d)).astype(np.float32)
  return dict(fn=_model(w_mat, b), x=x, **_closed_form(w_mat, b, x))


def _check_result(res, fn, x, y, *, eps, norm, target=None):
  """Range, budget, distances and success re-evaluated in numpy."""
  x_adv = np.asarray(res.x_adv)
  assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  delta = (x_adv - x).reshape(len(x), -1).astype(np.float64)
  dist = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
  assert np.all(dist <= np.broadcast_to(eps, dist.shape) * (1 + 1e-5) + 1e-6)
  np.testing.assert_allclose(res.linf, np.abs(delta).max(1), atol=1e-6)
  np.testing.assert_allclose(res.l2, np.linalg.norm(delta, axis=1), rtol=1e-5, atol=1e-6)
  pred = np.argmax(np.asarray(fn(jnp.asarray(x_adv))), 1)
  want = pred == target if target is not None else pred != y
  np.testing.assert_array_equal(np.asarray(res.success), want)


def test_checkpoints_follow_the_paper():
  # p = 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (then 1.05 > 1), w_j = ceil(p_j N).
  assert apgd_lib.checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
  assert apgd_lib.checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]
  assert apgd_lib.checkpoints(1) == [1]


def test_dlr_losses_match_their_formulas():
  z = jnp.asarray([[3.0, 1.0, 2.0, -1.0, 0.5], [0.0, 4.0, 1.0, 2.0, -2.0]])
  y = jnp.asarray([0, 0])
  t = jnp.asarray([3, 2])
  # Sorted: [3, 2, 1, 0.5, -1] and [4, 2, 1, 0, -2].
  np.testing.assert_allclose(apgd_lib.dlr_loss(z, y), [-(3 - 2) / (3 - 1), -(0 - 4) / (4 - 1)],
                             rtol=1e-6)
  np.testing.assert_allclose(apgd_lib.dlr_targeted_loss(z, y, t),
                             [-(3 + 1) / (3 - 0.75), -(0 - 1) / (4 - 0.5)], rtol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("loss", ["ce", "dlr"])
@pytest.mark.parametrize("targeted", [False, True])
def test_apgd_finds_the_closed_form_minimum(rival, norm, loss, targeted):
  x, y, dist = rival["x"], rival["y"], rival[norm]["dist"]
  target = (1 - y) if targeted else None
  for factor, want in ((1.02, True), (0.98, False)):
    res = apgd(rival["fn"], x, y, key=KEY, epsilon=factor * dist, norm=norm, loss=loss,
               num_steps=50, targeted=targeted, target=target)
    _check_result(res, rival["fn"], x, y, eps=factor * dist, norm=norm, target=target)
    assert np.all(np.asarray(res.success) == want), (factor, np.asarray(res.success))
    evals = np.asarray(res.num_grad_evals)
    if want:  # early stop: broken examples stop counting
      assert np.all((evals >= 1) & (evals <= 51)) and evals.mean() < 51
    else:
      np.testing.assert_array_equal(evals, 51)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_targeted_finds_the_closed_form_minimum(multi, norm):
  x, y, dist = multi["x"], multi["y"], multi[norm]["dist"]
  assert len(set(multi[norm]["near"])) > 1  # the nearest classes differ between examples
  for factor, want in ((1.02, True), (0.98, False)):
    res = apgd_targeted(multi["fn"], x, y, key=KEY, epsilon=factor * dist, norm=norm,
                        num_steps=50, num_target_classes=5)
    _check_result(res, multi["fn"], x, y, eps=factor * dist, norm=norm)
    assert np.all(np.asarray(res.success) == want), (factor, np.asarray(res.success))
    if not want:  # every target ran its 51 gradient evaluations
      np.testing.assert_array_equal(np.asarray(res.num_grad_evals), 5 * 51)


def test_chunking_does_not_change_the_result(multi):
  x, y, dist = multi["x"], multi["y"], multi["linf"]["dist"]
  whole, chunked = (apgd_targeted(multi["fn"], x, y, key=KEY, epsilon=dist, num_steps=20,
                                  num_target_classes=3, chunk_size=c) for c in (64, 5))
  assert 0 < np.mean(np.asarray(whole.success)) < 1
  np.testing.assert_array_equal(np.asarray(whole.success), np.asarray(chunked.success))
  np.testing.assert_array_equal(np.asarray(whole.num_grad_evals),
                                np.asarray(chunked.num_grad_evals))
  np.testing.assert_allclose(np.asarray(whole.x_adv), np.asarray(chunked.x_adv), atol=1e-6)


def test_restarts_and_no_early_stop_count_every_evaluation(rival):
  x, y, dist = rival["x"], rival["y"], rival["linf"]["dist"]
  res = apgd(rival["fn"], x, y, key=KEY, epsilon=0.98 * dist, num_steps=10, num_restarts=3)
  np.testing.assert_array_equal(np.asarray(res.num_grad_evals), 3 * 11)
  res = apgd(rival["fn"], x, y, key=KEY, epsilon=1.02 * dist, num_steps=10, num_restarts=3,
             early_stop=False)
  # Every example is broken in the first restart, which runs all its steps.
  assert np.all(np.asarray(res.success))
  np.testing.assert_array_equal(np.asarray(res.num_grad_evals), 11)


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 1.5)])
def test_outputs_stay_in_the_box_and_the_budget(norm, eps):
  """Inputs anywhere in [0, 1] and a large budget: the box constraint is active."""
  rng = np.random.RandomState(2)
  w_mat, b = rng.randn(12, 4), rng.randn(4)
  fn = _model(w_mat, b)
  x = rng.uniform(0.0, 1.0, (32, 12)).astype(np.float32)
  x[:, :3] = np.round(x[:, :3])  # some pixels on the faces of the box
  y = np.argmax(np.asarray(fn(x)), 1).astype(np.int32)
  eps_b = np.full(len(x), eps, np.float32) * rng.uniform(0.1, 1.0, len(x)).astype(np.float32)
  for res in (apgd(fn, x, y, key=KEY, epsilon=eps_b, norm=norm, loss="dlr", num_steps=20,
                   num_restarts=2, early_stop=False),
              apgd_targeted(fn, x, y, key=KEY, epsilon=eps_b, norm=norm, num_steps=20,
                            num_target_classes=3)):
    _check_result(res, fn, x, y, eps=eps_b, norm=norm)
    assert 0 < np.mean(np.asarray(res.success)) < 1  # the budget is informative


def test_apgd_is_jitable(rival):
  x, y, dist = rival["x"], rival["y"], rival["l2"]["dist"]
  fn = rival["fn"]

  @jax.jit
  def run(xx, yy, eps, key):
    return (apgd(fn, xx, yy, key=key, epsilon=eps, norm="l2", num_steps=20),
            apgd_targeted(fn, xx, yy, key=key, epsilon=eps, norm="l2", num_steps=20,
                          num_target_classes=2))

  for factor, want in ((1.02, True), (0.98, False)):
    for res in run(jnp.asarray(x), jnp.asarray(y), jnp.asarray(factor * dist), KEY):
      _check_result(res, fn, x, y, eps=factor * dist, norm="l2")
      assert np.all(np.asarray(res.success) == want)


def test_bad_inputs_raise(rival):
  fn, x, y = rival["fn"], rival["x"], rival["y"]
  kw = dict(key=KEY, epsilon=0.1)
  with pytest.raises(InvjaxError, match="epsilon"):
    apgd(fn, x, y, key=KEY, epsilon=-0.1)
  with pytest.raises(InvjaxError, match="epsilon"):
    apgd_targeted(fn, x, y, key=KEY, epsilon=0.0)
  with pytest.raises(InvjaxError, match="loss"):
    apgd(fn, x, y, loss="hinge", **kw)
  with pytest.raises(InvjaxError, match="norm"):
    apgd(fn, x, y, norm="l1", **kw)
  with pytest.raises(InvjaxError, match="norm"):
    apgd_targeted(fn, x, y, norm="linf2", **kw)
  with pytest.raises(InvjaxError, match="key"):
    apgd(fn, x, y, key=None, epsilon=0.1)
  with pytest.raises(InvjaxError, match="target"):
    apgd(fn, x, y, targeted=True, **kw)
  with pytest.raises(InvjaxError, match="target"):
    apgd(fn, x, y, target=1 - y, **kw)
  with pytest.raises(InvjaxError, match="differ"):
    apgd(fn, x, y, targeted=True, target=y, **kw)
  with pytest.raises(InvjaxError, match="num_steps"):
    apgd(fn, x, y, num_steps=0, **kw)
  with pytest.raises(InvjaxError, match="rho"):
    apgd(fn, x, y, rho=1.5, **kw)
  with pytest.raises(InvjaxError, match="momentum"):
    apgd(fn, x, y, momentum=0.0, **kw)
  with pytest.raises(InvjaxError, match="num_target_classes"):
    apgd_targeted(fn, x, y, num_target_classes=5, **kw)
  two = _model(np.ones((x.shape[1], 2)), np.zeros(2))
  with pytest.raises(InvjaxError, match="classes"):
    apgd(two, x, np.zeros(len(x), np.int32), loss="dlr", **kw)
  with pytest.raises(InvjaxError, match="chunk_size"):
    apgd(fn, x, y, chunk_size=0, **kw)
  with pytest.raises(InvjaxError, match="x"):
    apgd(fn, x + 2.0, y, **kw)
