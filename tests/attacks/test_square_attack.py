"""Square attack: closed-form linear models, a masked-gradient model, the official schedule
and window pattern, and torchattacks' Square on the same SmallCNN weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import invjax
from invjax._src import geometry
from invjax.attacks import gradient
from invjax.attacks import square_attack as sq_module
from invjax.attacks.square_attack import p_schedule, square, window_pattern

SHAPE = (8, 8, 3)
N = 32
Q = 300


def _linear_model(seed=0):
  w = jax.random.normal(jax.random.PRNGKey(seed), (int(np.prod(SHAPE)), 10))
  # Inside [0.25, 0.75] the box never binds for the budgets below, so the distances to the
  # decision boundaries are the closed-form ones.
  x = jax.random.uniform(jax.random.PRNGKey(seed + 1), (N,) + SHAPE, minval=0.25, maxval=0.75)
  return w, x


def _min_distances(w, x):
  """Closed-form minimal L_inf / L2 distances of x to the decision boundary of `x @ w`:
  min over j != y of margin_j / ||w_y - w_j||_q with q the dual norm (1 for L_inf, 2 for
  L2), y the predicted class; and y."""
  wn, xn = np.asarray(w, np.float64), np.asarray(x, np.float64).reshape(len(x), -1)
  logits = xn @ wn
  y = logits.argmax(1)
  diff = wn[:, y].T[:, None, :] - wn.T[None]  # [N, classes, d]: w_y - w_j
  margin = logits[np.arange(len(x)), y][:, None] - logits
  own = np.arange(wn.shape[1])[None] == y[:, None]
  dist = {q: np.where(own, np.inf, margin / np.where(own, 1.0, np.linalg.norm(diff, o, axis=2)))
          .min(1) for q, o in (("linf", 1), ("l2", 2))}
  return dist, y


@pytest.fixture(scope="module")
def linear():
  """A linear model, its own predictions as labels, and the closed-form minimal distances."""
  w, x = _linear_model()
  fn = jax.jit(lambda v: v.reshape(v.shape[0], -1) @ w)
  dist, y = _min_distances(w, x)
  return fn, x, jnp.asarray(y, jnp.int32), dist


def _norms(r, x):
  delta = (np.asarray(r.x_adv) - np.asarray(x)).reshape(len(x), -1)
  return {"linf": np.abs(delta).max(1), "l2": np.linalg.norm(delta, axis=1)}


def _check_result(fn, x, y, r, eps, norm, num_queries, targeted=False):
  """Budget, box, success re-checked on the model, query counts."""
  x_adv = np.asarray(r.x_adv)
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  assert np.all(_norms(r, x)[norm] <= eps * (1 + 1e-6) + 1e-6)
  pred = np.asarray(jnp.argmax(fn(r.x_adv), 1))
  np.testing.assert_array_equal(np.asarray(r.success), pred == y if targeted else pred != y)
  q = np.asarray(r.num_forward_evals)
  assert q.shape == (len(x),) and q.min() >= 1 and q.max() <= num_queries
  assert int(np.max(np.asarray(r.num_grad_evals))) == 0


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_linear_closed_form(linear, norm):
  fn, x, y, dist = linear
  yn = np.asarray(y)
  eps = 3.0 * dist[norm]
  r = square(fn, x, y, key=jax.random.PRNGKey(0), epsilon=eps, norm=norm, num_queries=Q)
  _check_result(fn, x, yn, r, eps, norm, Q)
  assert np.mean(np.asarray(r.success)) >= 0.95, np.asarray(r.success)
  # Below the minimal distance no point of the ball is adversarial.
  eps = 0.9 * dist[norm]
  r = square(fn, x, y, key=jax.random.PRNGKey(0), epsilon=eps, norm=norm, num_queries=Q)
  _check_result(fn, x, yn, r, eps, norm, Q)
  assert not np.any(np.asarray(r.success))
  np.testing.assert_array_equal(np.asarray(r.num_forward_evals), Q)


def test_early_stop_lowers_queries_and_keeps_successes(linear):
  fn, x, y, dist = linear
  eps = 3.0 * dist["linf"]
  kw = dict(key=jax.random.PRNGKey(0), epsilon=eps, num_queries=Q)
  stop = square(fn, x, y, early_stop=True, **kw)
  full = square(fn, x, y, early_stop=False, **kw)
  _check_result(fn, x, np.asarray(y), full, eps, "linf", Q)
  q_stop, q_full = np.asarray(stop.num_forward_evals), np.asarray(full.num_forward_evals)
  np.testing.assert_array_equal(q_full, Q)
  assert q_stop.mean() < 0.5 * Q and np.all(q_stop <= q_full)
  # Same draws: without early stop the search goes on from the same adversarial point and
  # only lowers the margin further.
  assert np.all(np.asarray(full.success) >= np.asarray(stop.success))
  margin = lambda r: np.asarray(geometry.logit_margin(fn(r.x_adv), y))
  assert np.all(margin(full) <= margin(stop) + 1e-5)


def test_restarts_and_targeted(linear):
  fn, x, y, dist = linear
  yn = np.asarray(y)
  eps = 1.3 * dist["linf"]
  kw = dict(key=jax.random.PRNGKey(1), epsilon=eps, num_queries=Q)
  one = square(fn, x, y, num_restarts=1, **kw)
  two = square(fn, x, y, num_restarts=2, **kw)
  _check_result(fn, x, yn, two, eps, "linf", 2 * Q)
  # The first restart is the same search: a second one only adds successes.
  assert np.all(np.asarray(two.success) >= np.asarray(one.success))
  assert np.asarray(two.success).sum() > np.asarray(one.success).sum()
  target = jnp.asarray((yn + 1) % 10, jnp.int32)
  r = square(fn, x, target, key=jax.random.PRNGKey(2), epsilon=0.2, num_queries=Q,
                targeted=True)
  _check_result(fn, x, np.asarray(target), r, 0.2, "linf", Q, targeted=True)
  assert np.mean(np.asarray(r.success)) >= 0.9


def test_jit_gives_the_eager_attack(linear):
  """Under the caller's `jax.jit` the attack compiles with JAX's options instead of
  `invjax._src.compilation.jit`'s (XLA:CPU's library choice), so float rounding may flip an
  accept/reject of the random search and a few trajectories diverge: the jitted result is as
  valid (budget, box, re-checked success, query counts) and as strong as the eager one."""
  fn, x, y, dist = linear
  eps = jnp.asarray(3.0 * dist["l2"], jnp.float32)
  run = lambda x, y, k, e: square(fn, x, y, key=k, epsilon=e, norm="l2", num_queries=Q)
  eager = run(x, y, jax.random.PRNGKey(0), eps)
  jitted = jax.jit(run)(x, y, jax.random.PRNGKey(0), eps)
  for r in (eager, jitted):
    _check_result(fn, x, np.asarray(y), r, np.asarray(eps), "l2", Q)
  same = np.mean(np.asarray(jitted.success) == np.asarray(eager.success))
  assert same >= 0.9, same
  assert abs(float(jitted.success_rate) - float(eager.success_rate)) <= 0.1


def test_masked_gradients_stop_pgd_not_square():
  """Logits of the input quantised to 1/255 steps, through a path whose gradient is zero."""
  w, x = _linear_model(seed=3)
  plain = jax.jit(lambda v: v.reshape(v.shape[0], -1) @ w)
  quantised = jax.jit(lambda v: plain(jax.lax.stop_gradient(jnp.round(v * 255) / 255)))
  y = jnp.argmax(quantised(x), 1).astype(jnp.int32)
  dist, y_plain = _min_distances(w, x)
  assert np.mean(np.asarray(y) == y_plain) >= 0.9
  grad = jax.grad(lambda v: jnp.sum(quantised(v) * jax.nn.one_hot(y, 10)))(x)
  assert not np.any(np.asarray(grad))  # the test model masks its gradients
  # Per example, 3x the closed-form distance of the unquantised model: breakable there, and
  # far beyond what PGD's random start alone reaches.
  eps = 3.0 * dist["linf"]
  pgd = lambda fn: gradient.pgd(fn, x, y, key=jax.random.PRNGKey(0), epsilon=eps, num_steps=20)
  assert np.mean(np.asarray(pgd(plain).success)) >= 0.9
  assert np.mean(np.asarray(pgd(quantised).success)) <= 0.05
  r = square(quantised, x, y, key=jax.random.PRNGKey(0), epsilon=eps, num_queries=Q)
  _check_result(quantised, x, np.asarray(y), r, eps, "linf", Q)
  assert np.mean(np.asarray(r.success)) >= 0.9


def _official_p(it, num_queries, p_init):
  """The official `p_selection` (rescaled schedule), transcribed as an if/elif chain."""
  it = int(it / num_queries * 10000)
  for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32),
                     (4000, 64), (6000, 128), (8000, 256)):
    if it <= bound:
      return p_init / div
  return p_init / 512


@pytest.mark.parametrize("num_queries", [100, 777, 5000, 10000])
def test_p_schedule_matches_official(num_queries):
  i = np.arange(num_queries)
  ours = np.asarray(p_schedule(jnp.asarray(i), num_queries, 0.8))
  ref = np.array([_official_p(k, num_queries, 0.8) for k in i])
  np.testing.assert_allclose(ours, ref, rtol=1e-6)


def test_window_pattern_matches_torchattacks():
  torch = pytest.importorskip("torch")
  torchattacks = pytest.importorskip("torchattacks")
  atk = torchattacks.Square(torch.nn.Linear(2, 2))
  atk.device = "cpu"
  for side in (1, 2, 3, 4, 5, 7, 9, 12):
    ref = atk.eta(side).numpy()  # randomly transposed
    ours = window_pattern(side)
    assert min(np.abs(ref - ours).max(), np.abs(ref.T - ours).max()) < 1e-6, side


def test_traced_window_pattern_matches_constant():
  """The loop's pattern (`_eta`, traced side, per-example corner and orientation)."""
  grid = jnp.zeros((3, 16, 16, 1))
  top, left = jnp.array([0, 3, 9]), jnp.array([0, 5, 2])
  transpose = jnp.array([False, True, False]).reshape(3, 1, 1, 1)
  eta = jax.jit(lambda side: sq_module._eta(*sq_module._coords(grid, top, left), side,
                                            transpose, 16))
  for side in (1, 3, 4, 7):
    got = np.asarray(eta(side))[..., 0]
    want = window_pattern(side)
    for n, (t, l) in enumerate(zip(np.asarray(top), np.asarray(left))):
      np.testing.assert_allclose(got[n, t:t + side, l:l + side], want.T if n == 1 else want,
                                 atol=1e-6)
      assert abs(np.abs(got[n]).sum() - np.abs(want).sum()) < 1e-5  # 0 outside the window


def _bad_calls(fn, x, y):
  key = jax.random.PRNGKey(0)
  return {
      "epsilon": lambda: square(fn, x, y, key=key, epsilon=-0.1),
      "norm": lambda: square(fn, x, y, key=key, epsilon=0.1, norm="l1"),
      "loss": lambda: square(fn, x, y, key=key, epsilon=0.1, loss="dlr"),
      "NHWC": lambda: square(lambda v: v @ jnp.ones((v.shape[1], 10)), x.reshape(N, -1), y,
                                key=key, epsilon=0.1),
      "num_queries": lambda: square(fn, x, y, key=key, epsilon=0.1, num_queries=1),
      "num_restarts": lambda: square(fn, x, y, key=key, epsilon=0.1, num_restarts=0),
      "p_init": lambda: square(fn, x, y, key=key, epsilon=0.1, p_init=1.5),
      "key": lambda: square(fn, x, y, key=None, epsilon=0.1),
      "y must lie": lambda: square(fn, x, y + 10, key=key, epsilon=0.1),
      "x": lambda: square(fn, x + 2.0, y, key=key, epsilon=0.1),
  }


@pytest.mark.parametrize("name", list(_bad_calls(None, jnp.zeros((N,) + SHAPE),
                                                 jnp.zeros(N, jnp.int32))))
def test_bad_input_raises(linear, name):
  fn, x, y, _ = linear
  with pytest.raises(invjax.InvjaxError, match=name):
    _bad_calls(fn, x, y)[name]()


def test_agrees_with_torchattacks_square():
  """Robust accuracy of invjax's and torchattacks' Square (L_inf, margin loss, 500 queries)
  on the same SmallCNN weights and 64 images, 16x16 crops of the embedded CIFAR-10 test set,
  labelled with the model's own predictions (clean accuracy 100%).

  The two random searches draw differently (per-example windows here, one window per
  iteration for the whole batch there; different generators), so the points on the edge of
  being broken within the budget differ between runs: torchattacks' own seeds move its
  robust accuracy by 1-2 images of 64 on this model. The test allows 4 images (6.25 points)
  at 2/255 (robust accuracy ~45%) and 8/255 (~5%); a broken search (no success, or a wrong
  schedule that halves the success rate at 2/255) falls far outside.
  """
  torch = pytest.importorskip("torch")
  torchattacks = pytest.importorskip("torchattacks")
  from tests.attacks.tiny_cnn import tiny_cnn  # pylint: disable=g-import-not-at-top

  net = tiny_cnn(widths=(16, 32), steps=150, learning_rate=3e-3, batch_size=128, num_images=64)
  fn, x, y, tmodel, xt_, yt_ = net.fn, net.x, net.y, net.tmodel, net.xt, net.yt
  np.testing.assert_allclose(tmodel(xt_).numpy(), np.asarray(fn(x)), atol=1e-4)
  for eps in (2 / 255, 8 / 255):
    ours = square(fn, x, y, key=jax.random.PRNGKey(0), epsilon=eps, num_queries=500)
    _check_result(fn, x, np.asarray(y), ours, eps, "linf", 500)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: threads only contend on busy cores
    try:
      adv = torchattacks.Square(tmodel, norm="Linf", eps=eps, n_queries=500, seed=0)(xt_, yt_)
      theirs = float((tmodel(adv).argmax(1) == yt_).float().mean())
    finally:
      torch.set_num_threads(threads)
    robust = 1.0 - float(np.mean(np.asarray(ours.success)))
    assert abs(robust - theirs) <= 4 / 64 + 1e-9, (eps, robust, theirs)


def _row_model(seed=4):
  """A linear model whose logits are per-row elementwise products and sums (no matmul), so
  that a row's logits are bitwise the same whatever the batch it is evaluated in."""
  w = jax.random.normal(jax.random.PRNGKey(seed), (int(np.prod(SHAPE)), 10))
  fn = jax.jit(lambda v: jnp.sum(v.reshape(v.shape[0], -1, 1) * w[None], axis=1))
  x = jax.random.uniform(jax.random.PRNGKey(seed + 1), (N,) + SHAPE, minval=0.25, maxval=0.75)
  y = jnp.argmax(fn(x), 1).astype(jnp.int32)
  dist, _ = _min_distances(w, x)
  return fn, x, y, dist


@pytest.mark.parametrize("norm, restarts", [("linf", 2), ("l2", 1)])
def test_compaction_gives_the_uncompacted_search(norm, restarts):
  """Compacted into buffers down to 4 examples, or not at all (`min_buffer` = the batch):
  the same points, successes and query counts, exactly. Each example's draws are its rows of
  the whole batch's draws and the model's rows do not mix (`_row_model`), so nothing an
  example sees depends on its buffer; the budgets (from 1.5x / 2.5x the closed-form
  distances up) leave examples broken early, late and never."""
  fn, x, y, dist = _row_model()
  n = 16
  x, y = x[:n], y[:n]
  eps = dist[norm][:n] * np.linspace(*{"linf": (1.5, 6.0), "l2": (2.5, 5.0)}[norm], n)
  num_queries = 150
  kw = dict(key=jax.random.PRNGKey(3), epsilon=eps, norm=norm, num_queries=num_queries,
            num_restarts=restarts)
  whole = square(fn, x, y, min_buffer=n, **kw)
  q = np.asarray(whole.num_forward_evals)
  assert q.min() < num_queries / 2 and q.max() == restarts * num_queries
  assert np.sum(q < q.max()) > n // 2  # the search went on in smaller buffers
  r = square(fn, x, y, min_buffer=4, **kw)
  _check_result(fn, x, np.asarray(y), r, eps, norm, restarts * num_queries)
  np.testing.assert_array_equal(np.asarray(r.x_adv), np.asarray(whole.x_adv))
  np.testing.assert_array_equal(np.asarray(r.success), np.asarray(whole.success))
  np.testing.assert_array_equal(np.asarray(r.num_forward_evals), q)


def test_queries_are_the_model_calls_spent():
  """Recounted from the model's own calls (run eagerly, every input row logged): an example's
  queries are its rows up to its first adversarial one (after that it is no longer searched,
  though a buffer may still hold it), or all its rows if it never becomes adversarial; rows
  are told apart by their nearest clean input (the inputs are far apart, the ball small).
  The first call (the input check of `inputs.validate`, on the clean input) and the last
  (the success re-check) are not queries. The rows the model saw in the search steps
  (all calls but those two, the clean and the starting ones) are at most
  max(2 a_t, min_buffer) per step, a_t the examples still searched at step t (recounted)."""
  fn, x, y, dist = _row_model(seed=6)
  eps = dist["linf"] * np.linspace(1.5, 6.0, N)
  calls = []

  def logged(v):
    try:
      calls.append(np.asarray(v))
    except jax.errors.TracerArrayConversionError:  # the input checks trace the model
      pass
    return fn(v)

  num_queries, min_buffer = 60, 4
  with jax.disable_jit():
    r = square(logged, x, y, key=jax.random.PRNGKey(0), epsilon=eps, num_queries=num_queries,
               min_buffer=min_buffer)
  _check_result(fn, x, np.asarray(y), r, eps, "linf", num_queries)
  xs = np.asarray(x).reshape(N, -1)
  seen = [[] for _ in range(N)]  # per example: adversarial?, per row in call order
  np.testing.assert_array_equal(calls[0], np.asarray(x))  # the input check
  for v in calls[1:-1]:
    flat = v.reshape(len(v), -1)
    owner = np.abs(flat[:, None] - xs[None]).max(-1).argmin(1)
    adv = np.asarray(jnp.argmax(fn(v), 1)) != np.asarray(y)[owner]
    for e, a in zip(owner, adv):
      seen[e].append(bool(a))
  recount = np.array([s.index(True) + 1 if True in s else len(s) for s in seen])
  q = np.asarray(r.num_forward_evals)
  np.testing.assert_array_equal(q, recount)
  assert q.min() < num_queries / 2 and q.max() == num_queries
  steps = [len(v) for v in calls[3:-1]]
  assert len(steps) == q.max() - 2
  a = np.array([np.sum(q > t + 2) for t in range(len(steps))])
  assert np.all(np.asarray(steps) <= np.maximum(2 * a, min_buffer)), (steps, a)
  assert sum(steps) < N * len(steps)  # fewer than the uncompacted loop's
