"""FAB (invjax.attacks.fab_attack) against closed forms, scipy and torchattacks.

Linear multiclass models `f(x) = x W + b` have a closed-form minimal distance to the
decision boundary when the box is inactive: min over j != y of
`(f_y - f_j) / ||w_y - w_j||_*` with the dual norm (L1 for L_inf, L2 for L2). The fixture
checks that the minimisers stay inside [0, 1]^d, so the closed form is the true minimum.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import invjax
from invjax.attacks.fab_attack import fab, project_to_plane

N, D, K = 24, 32, 10
STEPS = 20


def _distance_to_class(W, logits, x, y, j, norm):
  """Distance from x to the plane f_j = f_y and the minimiser's offset (per example)."""
  dw = W[:, y] - W[:, j]  # [D, n]
  margin = logits[np.arange(len(y)), y] - logits[np.arange(len(y)), j]
  if norm == "linf":
    dist = margin / np.abs(dw).sum(0)
    step = -dist[:, None] * np.sign(dw.T)
  else:
    dist = margin / np.linalg.norm(dw, axis=0)
    step = -dist[:, None] * dw.T / np.linalg.norm(dw, axis=0)[:, None]
  return dist, x + step


@pytest.fixture(scope="module")
def linear():
  rng = np.random.default_rng(0)
  W = (0.3 * rng.normal(size=(D, K))).astype(np.float32)
  b = (0.1 * rng.normal(size=K)).astype(np.float32)
  x = rng.uniform(0.35, 0.65, (N, D)).astype(np.float32)
  fn = lambda v: v.reshape(v.shape[0], -1) @ jnp.asarray(W) + jnp.asarray(b)
  logits = np.asarray(fn(x), np.float64)
  W = W.astype(np.float64)
  y = logits.argmax(1).astype(np.int32)
  minimal = {}
  for norm in ("linf", "l2"):
    dists = np.full((N, K), np.inf)
    for j in range(K):
      other = y != j
      with np.errstate(invalid="ignore", divide="ignore"):
        dists[other, j] = _distance_to_class(W, logits, x, y, np.full(N, j), norm)[0][other]
    # A class's box-free distance bounds its distance in the box from below, so the minimum
    # over classes is exact when the closest class's minimiser lies inside the box.
    z = _distance_to_class(W, logits, x, y, dists.argmin(1), norm)[1]
    assert np.all((z > 0) & (z < 1))
    minimal[norm] = dists.min(1)
  return fn, jnp.asarray(x), jnp.asarray(y), minimal


def _dist(result, norm):
  return np.asarray(result.linf if norm == "linf" else result.l2)


def _check_result(fn, x, y, result):
  x_adv = np.asarray(result.x_adv)
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  recheck = np.asarray(jnp.argmax(fn(result.x_adv), 1)) != np.asarray(y)
  np.testing.assert_array_equal(np.asarray(result.success), recheck)


# ----------------------------------------------------------------------------- projection


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_matches_scipy(norm):
  optimize = pytest.importorskip("scipy.optimize")
  rng = np.random.default_rng(1)
  n, d = 8, 9
  p = rng.uniform(0, 1, (n, d)).astype(np.float32)
  w = rng.normal(size=(n, d)).astype(np.float32)
  w[0, 3] = 0.0
  c = (0.5 * rng.normal(size=n)).astype(np.float32)
  r = (p * w).sum(1) + c
  delta = np.asarray(project_to_plane(jnp.asarray(p), jnp.asarray(w), jnp.asarray(r),
                                              norm))
  p, w, c, r = (v.astype(np.float64) for v in (p, w, c, r))
  for i in range(n):
    bounds = [(-p[i, k], 1 - p[i, k]) for k in range(d)]
    if norm == "linf":  # min rho s.t. -rho <= delta <= rho, w.delta = -r, box
      a_ub = np.block([[np.eye(d), -np.ones((d, 1))], [-np.eye(d), -np.ones((d, 1))]])
      ref = optimize.linprog(np.r_[np.zeros(d), 1.0], A_ub=a_ub, b_ub=np.zeros(2 * d),
                             A_eq=np.r_[w[i], 0.0][None], b_eq=[-r[i]],
                             bounds=bounds + [(0, None)])
      ours = np.abs(delta[i]).max()
      expected = ref.fun
    else:
      plane = {"type": "eq", "fun": lambda z, i=i: w[i] @ z + r[i]}
      ref = optimize.minimize(lambda z: z @ z, np.zeros(d), jac=lambda z: 2 * z,
                              constraints=[plane], bounds=bounds, method="SLSQP",
                              options={"ftol": 1e-10, "maxiter": 1000})
      ours = np.linalg.norm(delta[i])
      expected = np.sqrt(ref.fun)
    assert ref.success
    np.testing.assert_allclose(ours, expected, rtol=1e-4)
    assert abs(w[i] @ (p[i] + delta[i]) + c[i]) < 1e-5
    assert np.all(p[i] + delta[i] >= -1e-6) and np.all(p[i] + delta[i] <= 1 + 1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_out_of_reach_goes_to_the_closest_corner(norm):
  p = jnp.full((1, 4), 0.5)
  w = jnp.asarray([[1.0, -2.0, 0.5, 0.0]])
  # w.z + c = 0 needs w.z = 10, beyond the box's best corner (1, 0, 1, *): w.z = 1.5
  delta = np.asarray(project_to_plane(p, w, jnp.asarray([float(w[0] @ p[0]) - 10.0]),
                                              norm))
  np.testing.assert_allclose(delta[0], [0.5, -0.5, 0.5, 0.0], atol=1e-6)


# ----------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("targeted", [True, False])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_distance_within_5_percent_of_the_minimal(linear, norm, targeted):
  fn, x, y, minimal = linear
  result = fab(fn, x, y, norm=norm, targeted=targeted, num_steps=STEPS)
  _check_result(fn, x, y, result)
  assert np.all(np.asarray(result.success))
  ratio = _dist(result, norm) / minimal[norm]
  assert ratio.min() >= 1 - 1e-4 and ratio.max() <= 1.05, (ratio.min(), ratio.max())
  # honest counts: one backward pass per step and target (FAB-T), per class (untargeted)
  per_step = 1 if targeted else K
  runs = K - 1 if targeted else 1  # num_target_classes=9 = K - 1
  np.testing.assert_array_equal(np.asarray(result.num_grad_evals), STEPS * runs * per_step)
  np.testing.assert_array_equal(np.asarray(result.num_forward_evals), STEPS * runs)


@pytest.mark.parametrize("targeted", [True, False])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_budget_just_above_and_below_the_minimal(linear, norm, targeted):
  fn, x, y, minimal = linear
  above = 1.02 * minimal[norm]
  result = fab(fn, x, y, norm=norm, targeted=targeted, num_steps=STEPS,
               epsilon=jnp.asarray(above, jnp.float32))
  _check_result(fn, x, y, result)
  assert np.all(np.asarray(result.success))
  assert np.all(_dist(result, norm) <= above * (1 + 1e-6))
  below = fab(fn, x, y, norm=norm, targeted=targeted, num_steps=STEPS,
              epsilon=jnp.asarray(0.98 * minimal[norm], jnp.float32))
  _check_result(fn, x, y, below)
  assert not np.any(np.asarray(below.success))
  np.testing.assert_array_equal(np.asarray(below.x_adv), np.asarray(x))


def test_early_stop_saves_work_not_success(linear):
  fn, x, y, minimal = linear
  eps = jnp.asarray(np.where(np.arange(N) % 2, 1.02, 0.98) * minimal["linf"], jnp.float32)
  runs = {stop: fab(fn, x, y, num_steps=STEPS, epsilon=eps, early_stop=stop)
          for stop in (True, False)}
  np.testing.assert_array_equal(np.asarray(runs[True].success), np.arange(N) % 2 == 1)
  np.testing.assert_array_equal(np.asarray(runs[False].success), np.arange(N) % 2 == 1)
  assert np.all(_dist(runs[False], "linf") <= _dist(runs[True], "linf") + 1e-7)
  fast, full = np.asarray(runs[True].num_grad_evals), np.asarray(runs[False].num_grad_evals)
  assert np.all(fast <= full) and fast.sum() < full.sum()


def test_targets_are_the_top_clean_logits(norm="linf"):
  # class 1 has the second logit but a far boundary (small weights); class 2 a lower logit
  # and the closest boundary (large weights)
  rng = np.random.default_rng(2)
  n, d = 8, 16
  v = rng.normal(size=(d, 2))
  v /= np.abs(v).sum(0) if norm == "linf" else np.linalg.norm(v, axis=0)
  W = np.concatenate([np.zeros((d, 1)), 0.1 * v[:, :1], v[:, 1:]], 1)
  x = rng.uniform(0.495, 0.505, (n, d))
  b = -0.5 * W.sum(0) - np.array([0.0, 0.03, 0.1])  # margins 0.03 and 0.1 at the centre
  fn = lambda z: z @ jnp.asarray(W, jnp.float32) + jnp.asarray(b, jnp.float32)
  logits = x @ W + b
  y = logits.argmax(1)
  assert np.all(y == 0) and np.all(logits[:, 1] > logits[:, 2])
  far = _distance_to_class(W, logits, x, y, np.full(n, 1), norm)
  near = _distance_to_class(W, logits, x, y, np.full(n, 2), norm)
  assert np.all(near[0] < 0.8 * far[0])
  for z in (far[1], near[1]):
    assert np.all((z > 0) & (z < 1))  # box inactive
  xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
  for k, expected in ((1, far[0]), (2, near[0])):
    result = fab(fn, xj, yj, norm=norm, num_target_classes=k, num_steps=STEPS)
    ratio = _dist(result, norm) / expected
    assert ratio.min() >= 1 - 1e-4 and ratio.max() <= 1.05, (k, ratio)


def test_misclassified_inputs_come_back_unchanged(linear):
  fn, x, y, _ = linear
  wrong = (y + 1) % K
  result = fab(fn, x, wrong, num_steps=2, epsilon=0.1)
  np.testing.assert_array_equal(np.asarray(result.x_adv), np.asarray(x))
  assert np.all(np.asarray(result.success)) and np.all(np.asarray(result.num_grad_evals) == 0)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_restarts(linear, norm):
  fn, x, y, minimal = linear
  result = fab(fn, x, y, key=jax.random.PRNGKey(3), norm=norm, targeted=False,
               num_restarts=2, num_steps=STEPS)
  _check_result(fn, x, y, result)
  ratio = _dist(result, norm) / minimal[norm]
  assert ratio.min() >= 1 - 1e-4 and ratio.max() <= 1.05


def test_jit_matches_eager(linear):
  fn, x, y, minimal = linear
  eps = jnp.asarray(1.02 * minimal["l2"], jnp.float32)
  run = lambda x, y, eps: fab(fn, x, y, epsilon=eps, norm="l2", num_steps=STEPS)
  jitted, eager = jax.jit(run)(x, y, eps), run(x, y, eps)
  np.testing.assert_allclose(np.asarray(jitted.x_adv), np.asarray(eager.x_adv), atol=1e-6)
  np.testing.assert_array_equal(np.asarray(jitted.success), np.asarray(eager.success))


@pytest.mark.parametrize("kwargs", [
    dict(norm="l1"), dict(epsilon=-0.1), dict(epsilon=float("nan")), dict(num_steps=0),
    dict(num_restarts=2), dict(num_restarts=2, random_start=False, key=jax.random.PRNGKey(0)),
    dict(alpha_max=0.0), dict(eta=0.9), dict(beta=1.0), dict(num_target_classes=0)])
def test_bad_input_raises(linear, kwargs):
  fn, x, y, _ = linear
  with pytest.raises(invjax.InvjaxError):
    fab(fn, x, y, **kwargs)


def test_bad_images_and_labels_raise(linear):
  fn, x, y, _ = linear
  with pytest.raises(invjax.InvjaxError):
    fab(fn, x + 2.0, y)
  with pytest.raises(invjax.InvjaxError):
    fab(fn, x, y.astype(jnp.float32))
  with pytest.raises(invjax.InvjaxError):
    fab(fn, x, jnp.full_like(y, K))


# ----------------------------------------------------------------------------- torchattacks


def test_agrees_with_torchattacks_fab_t_on_small_cnn():
  """FAB-T (AutoAttack's: 9 targets, one run each, no restart) in torchattacks and here on the
  same SmallCNN weights. Both run the same deterministic algorithm (torchattacks' FAB
  finishes every run and skips later targets for the points broken within epsilon, like
  `early_stop=False`), so they differ only by float rounding: robust accuracy within one
  image (an iterate within rounding of the boundary can flip one argmax) and median minimal
  distances within 2%."""
  torch = pytest.importorskip("torch")
  torchattacks = pytest.importorskip("torchattacks")
  from tests.attacks.tiny_cnn import tiny_cnn

  # a random network is almost constant on images: FAB would fail
  net = tiny_cnn(widths=(8, 16), steps=25, learning_rate=1e-2, num_train=128, num_images=32)
  fn, x, y, tmodel, xt_, yt_ = net.fn, net.x, net.y, net.tmodel, net.xt, net.yt
  steps, n = 10, len(y)
  threads = torch.get_num_threads()
  for eps in (8 / 255, 2 / 255, 1.0):  # 1.0: every point breaks, distances are minimal-norm
    ours = fab(fn, x, y, epsilon=eps, num_steps=steps, early_stop=False)
    _check_result(fn, x, y, ours)
    attack = torchattacks.FAB(tmodel, norm="Linf", eps=eps, steps=steps, n_restarts=1,
                              multi_targeted=True, n_classes=10)
    torch.set_num_threads(1)  # tiny batches: threads only contend (20x slower on 2 busy cores)
    try:
      adv = attack(xt_, yt_)
      with torch.no_grad():
        theirs = (tmodel(adv).argmax(1) != yt_).numpy()
    finally:
      torch.set_num_threads(threads)
    their_dist = (adv - xt_).abs().reshape(n, -1).max(1)[0].numpy()
    our_success = np.asarray(ours.success)
    assert abs(our_success.mean() - theirs.mean()) <= 1 / n, (eps, our_success, theirs)
    both = our_success & theirs
    assert both.sum() >= n // 4
    np.testing.assert_allclose(np.median(np.asarray(ours.linf)[both]),
                               np.median(their_dist[both]), rtol=0.02)
    if eps == 8 / 255:
      assert 0.0 < 1 - theirs.mean() < 1.0  # informative: some points survive 8/255
