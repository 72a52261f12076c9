"""The AutoAttack ensemble: the standard protocol's budgets and order, attacks only on the
points still robust, the per-example worst case against closed-form minimal distances, the
sanity flags, and the final re-check of every reported adversarial.

Stand-ins (`STAND_INS`, PGD for APGD / APGD-T / FAB-T, a random vertex search for Square) have
the signatures of the real attacks; `test_real_attacks_registry` runs the imported ones.
"""
import functools
import json
import warnings

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

from invjax._src import checks
from invjax._src import geometry
from invjax.attacks.ensemble import (AutoAttackWarning, Step, autoattack, check_adversarials,
                                       markdown_table, schedule)
from invjax.attacks import gradient
from invjax.attacks.result import from_adversarial


def _apgd(logits_fn, x, y, *, key, epsilon, norm="linf", loss="ce", num_steps=100,
          num_restarts=1, targeted=False):
  assert not targeted
  return gradient.pgd(logits_fn, x, y, key=key, epsilon=epsilon, norm=norm, num_steps=num_steps,
                      num_restarts=num_restarts, loss="ce" if loss == "ce" else "margin")


def _apgd_targeted(logits_fn, x, y, *, key, epsilon, norm="linf", num_steps=100,
                   num_target_classes=9, num_restarts=1):
  del num_target_classes
  return gradient.pgd(logits_fn, x, y, key=key, epsilon=epsilon, norm=norm, num_steps=num_steps,
                      num_restarts=num_restarts, loss="margin")


def _fab(logits_fn, x, y, *, key, epsilon=None, norm="linf", num_steps=100, num_restarts=1,
         targeted=True, num_target_classes=9):
  del targeted, num_target_classes
  return gradient.pgd(logits_fn, x, y, key=key, epsilon=epsilon, norm=norm, num_steps=num_steps,
                      num_restarts=num_restarts, loss="margin")


@functools.partial(jax.jit, static_argnames=("logits_fn", "norm", "num_queries"))
def _search(logits_fn, x, y, key, epsilon, *, norm, num_queries):
  """Score-based random search on the ball's surface: from a random direction, each query
  redraws a tenth of the coordinates and keeps the draw when the margin drops."""
  def unit(d):
    return jnp.sign(d) if norm == "linf" else geometry.unit_l2(d)

  def body(i, state):
    direction, margin = state
    k_mask, k_new = jax.random.split(jax.random.fold_in(key, i))
    redraw = jax.random.uniform(k_mask, x.shape) < 0.1
    cand = jnp.where(redraw, jax.random.normal(k_new, x.shape), direction)
    m = geometry.logit_margin(logits_fn(geometry.project(x + epsilon * unit(cand), x, epsilon,
                                                         norm)), y)
    better = (m < margin) & (margin >= 0)
    return (jnp.where(geometry.per_example(better, x.ndim) > 0, cand, direction),
            jnp.where(better, m, margin))

  key, k_start = jax.random.split(key)
  start = jax.random.normal(k_start, x.shape)
  margin = geometry.logit_margin(logits_fn(geometry.project(x + epsilon * unit(start), x,
                                                            epsilon, norm)), y)
  direction, _ = lax.fori_loop(0, num_queries, body, (start, margin))
  best = geometry.project(x + epsilon * unit(direction), x, epsilon, norm)
  return from_adversarial(logits_fn, x, best, y, num_forward_evals=num_queries + 1)


def _square(logits_fn, x, y, *, key, epsilon, norm="linf", num_queries=5000):
  return _search(logits_fn, x, y, key, jnp.float32(epsilon), norm=norm, num_queries=num_queries)


STAND_INS = {"apgd": _apgd, "apgd_targeted": _apgd_targeted, "fab": _fab, "square": _square}
KEY = jax.random.PRNGKey(0)


def _quiet(fn, *args, **kwargs):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", AutoAttackWarning)
    return fn(*args, **kwargs)


# ----------------------------------------------------------------------------- the protocol


def test_standard_schedule_is_the_reference_protocol():
  for norm in ("linf", "l2"):
    steps = schedule("standard", norm)
    assert [s.name for s in steps] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    by = {s.name: s for s in steps}
    assert by["apgd-ce"].attack == "apgd"
    assert dict(by["apgd-ce"].kwargs) == dict(loss="ce", num_steps=100, num_restarts=1)
    assert dict(by["apgd-t"].kwargs) == dict(num_steps=100, num_target_classes=9, num_restarts=1)
    assert dict(by["fab-t"].kwargs) == dict(num_steps=100, num_restarts=1, targeted=True,
                                            num_target_classes=9)
    assert by["fab-t"].minimal_norm and not by["apgd-ce"].minimal_norm
    assert dict(by["square"].kwargs) == dict(num_queries=5000)
  plus = schedule("plus", "linf")
  assert [s.name for s in plus] == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
  assert plus[1].kwargs["loss"] == "dlr" and plus[1].kwargs["num_restarts"] == 5
  small = schedule("standard", "linf", num_steps=5, num_queries=50, num_target_classes=3)
  assert [s.kwargs.get("num_steps") for s in small] == [5, 5, 5, None]
  assert small[3].kwargs["num_queries"] == 50 and small[2].kwargs["num_target_classes"] == 3
  with pytest.raises(checks.InvjaxError, match="version"):
    schedule("rand")
  with pytest.raises(checks.InvjaxError, match="num_steps"):
    schedule(num_steps=0)


def _linear_problem(n=48, d=20, seed=0):
  """Two classes, logits x @ W + b, points in [0.3, 0.7]^d (the box never binds at eps <= 0.1)."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(d, 2)).astype(np.float32)
  x = rng.uniform(0.3, 0.7, size=(n, d)).astype(np.float32)
  b = -np.median(x @ w, axis=0).astype(np.float32)
  logits = x @ w + b
  y = np.argmax(logits, 1).astype(np.int32)
  y[:4] = 1 - y[:4]  # four misclassified points
  return (lambda v: v @ jnp.asarray(w) + jnp.asarray(b)), x, y, w, logits


@pytest.mark.parametrize("norm,eps", [("linf", 0.02), ("l2", 0.08)])
def test_worst_case_matches_the_closed_form_minimal_distance(norm, eps):
  logits_fn, x, y, w, logits = _linear_problem()
  dual = {"linf": 1, "l2": 2}[norm]  # minimal distance: margin / ||w_y - w_other||_dual
  dist = np.abs(logits[:, 0] - logits[:, 1]) / np.linalg.norm(w[:, 0] - w[:, 1], ord=dual)
  correct = np.argmax(logits, 1) == y
  steps = schedule("standard", norm, num_steps=20, num_queries=200)
  with pytest.warns(AutoAttackWarning, match="target classes"):
    report = autoattack(logits_fn, x, y, key=KEY, epsilon=eps, norm=norm,
                           attacks=STAND_INS, steps=steps)
  assert "too_few_classes" in report.flags  # 2 classes, 9 targets asked
  assert set(report.flags) == {"too_few_classes"}
  clear = np.abs(dist - eps) > 0.02 * eps
  broken = np.array([b is not None for b in report.broken_by])
  np.testing.assert_array_equal(broken[clear], (~correct | (dist < eps))[clear])
  assert 5 < np.sum(correct & (dist < eps)) < np.sum(correct) - 5  # both kinds present
  assert [b for b, c in zip(report.broken_by, correct) if not c] == ["clean"] * 4
  assert report.clean_accuracy == pytest.approx(np.mean(correct))
  assert report.robust_accuracy == pytest.approx(np.mean(~broken))
  # attacks only see what is still robust; the running robust accuracy goes down
  attacked = [a.num_attacked for a in report.attacks]
  assert attacked[0] == np.sum(correct)
  for prev, a in zip(report.attacks, report.attacks[1:]):
    assert a.num_attacked == prev.num_attacked - prev.num_broken
    assert a.robust_accuracy_after <= prev.robust_accuracy_after
  assert report.attacks[-1].robust_accuracy_after == pytest.approx(report.robust_accuracy)
  assert report.attacks[0].grad_evals > 0 and report.attacks[-1].forward_evals > 0
  d_adv = geometry.flat_norm(jnp.asarray(report.x_adv - x), norm)
  assert float(jnp.max(d_adv)) <= eps * (1 + 1e-4)
  assert report.x_adv.min() >= 0 and report.x_adv.max() <= 1
  np.testing.assert_array_equal(report.x_adv[~broken], x[~broken])
  saved = json.loads(json.dumps(report.to_json()))
  assert saved["robust_accuracy"] == report.robust_accuracy and len(saved["broken_by"]) == 48
  assert [a["name"] for a in saved["attacks"]] == ["apgd-ce", "apgd-t", "fab-t", "square"]
  table = markdown_table([report])
  assert "| apgd-ce |" in table.splitlines()[0] and "too_few_classes" in table


# ----------------------------------------------------------------------------- the bookkeeping


def _threshold_model(v):
  """Class 0 while v[:, 1] < 0.5, class 1 above."""
  return jnp.stack([0.5 - v[:, 1], v[:, 1] - 0.5], axis=1) * 10.0


def _spy(calls, name, breaks, shift=0.05, claim=None):
  """An attack that moves feature 1 by `shift` on the points whose id (feature 0) is in
  `breaks`, and records what it was given."""
  def attack(logits_fn, x, y, *, key, epsilon, norm="linf", **kwargs):
    del key
    x = np.asarray(x)
    calls.append((name, x[:, 0].round(3).tolist(), epsilon, norm, kwargs))
    x_adv = x.copy()
    x_adv[:, 1] += np.where(np.isin(np.round(x[:, 0] * 1000).astype(int), breaks), shift, 0.0)
    res = from_adversarial(logits_fn, x, x_adv, y, num_grad_evals=7)
    return res if claim is None else res.replace(success=jnp.full(x.shape[0], claim))
  return attack


def _spy_points(n=10):
  ids = np.arange(n)
  x = np.stack([ids / 1000, np.full(n, 0.48)], axis=1).astype(np.float32)
  return x, np.zeros(n, np.int32)


def test_each_attack_runs_on_the_remaining_points_and_the_first_success_is_kept():
  x, y = _spy_points()
  calls = []
  attacks = {"apgd": _spy(calls, "apgd", [1, 2]), "apgd_targeted": _spy(calls, "t", [2, 3]),
             "fab": _spy(calls, "fab", []), "square": _spy(calls, "square", [9])}
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    report = autoattack(_threshold_model, x, y, key=KEY, epsilon=0.05, attacks=attacks,
                           steps=schedule("standard", "linf", num_steps=3))
  messages = " ".join(str(w.message) for w in caught if w.category is AutoAttackWarning)
  assert "Square broke 1 point(s)" in messages and "2 classes" in messages
  assert [c[0] for c in calls] == ["apgd", "t", "fab", "square"]
  assert calls[0][1] == pytest.approx(list(x[:, 0]))
  assert calls[1][1] == pytest.approx([x[i, 0] for i in (0, 3, 4, 5, 6, 7, 8, 9)])
  assert calls[0][2:4] == (0.05, "linf")
  assert calls[0][4] == dict(loss="ce", num_steps=3, num_restarts=1)
  assert calls[2][4] == dict(num_steps=3, num_restarts=1, targeted=True, num_target_classes=1)
  assert report.broken_by == (None, "apgd-ce", "apgd-ce", "apgd-t") + (None,) * 5 + ("square",)
  assert [a.num_broken for a in report.attacks] == [2, 1, 0, 1]
  assert [a.grad_evals for a in report.attacks] == [70, 56, 49, 49]
  assert "square_improved" in report.flags  # Square broke 1 of 10 after the gradient attacks
  assert report.robust_accuracy == pytest.approx(0.6)
  np.testing.assert_allclose(report.x_adv[[1, 2, 3, 9], 1], 0.53, atol=1e-6)
  chunked = _quiet(autoattack, _threshold_model, x, y, key=KEY, epsilon=0.05, batch_size=3,
                   attacks=attacks, steps=schedule("standard", "linf", num_steps=3))
  assert chunked.broken_by == report.broken_by


def test_unconfirmed_successes_are_rejected_and_flagged():
  x, y = _spy_points()
  calls = []
  attacks = dict(STAND_INS, apgd=_spy(calls, "apgd", [1, 2, 3], shift=0.1),  # beyond the budget
                 apgd_targeted=_spy(calls, "t", [], claim=True))  # claims, moves nothing
  steps = schedule("standard", "linf", num_steps=2)[:2]
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    report = autoattack(_threshold_model, x, y, key=KEY, epsilon=0.05, attacks=attacks,
                           steps=steps)
  assert any("does not confirm" in str(w.message) for w in caught)
  assert report.broken_by == (None,) * 10
  assert [a.num_unconfirmed for a in report.attacks] == [3, 10]
  assert "unconfirmed_success" in report.flags
  # a minimal-norm attack's successes beyond epsilon are expected: counted, not flagged
  fab = Step("fab-t", "fab", {}, minimal_norm=True)
  report = autoattack(_threshold_model, x, y, key=KEY, epsilon=0.05, steps=[fab],
                         attacks={"fab": _spy(calls, "fab", [4, 5], shift=0.1)})
  assert report.attacks[0].num_outside_budget == 2 and not report.flags


def test_final_check_raises_on_a_bad_adversarial():
  x, y = _spy_points(4)
  good = x.copy()
  good[1, 1] = 0.53
  check_adversarials(_threshold_model, x, y, good, [None, "a", None, None], epsilon=0.05,
                        norm="linf")
  far = x.copy()
  far[1, 1] = 0.6  # misclassified but outside the ball
  with pytest.raises(checks.InvjaxError, match="final check"):
    check_adversarials(_threshold_model, x, y, far, [None, "a", None, None], epsilon=0.05,
                          norm="linf")
  with pytest.raises(checks.InvjaxError, match="final check"):  # still classified correctly
    check_adversarials(_threshold_model, x, y, x, [None, "a", None, None], epsilon=0.05,
                          norm="linf")
  with pytest.raises(checks.InvjaxError, match="x_adv != x"):
    check_adversarials(_threshold_model, x, y, good, [None] * 4, epsilon=0.05, norm="linf")


# ----------------------------------------------------------------------------- sanity flags


def test_flags_randomness_probabilities_and_nonfinite_gradients():
  x, y = _spy_points(6)
  steps = [Step("apgd-ce", "apgd", dict(num_steps=1))]
  rng = np.random.default_rng(0)
  noisy = lambda v: _threshold_model(v) + jnp.asarray(rng.normal(size=(v.shape[0], 2)) * 1e-3,
                                                      jnp.float32)
  with pytest.warns(AutoAttackWarning, match="differ"):
    report = autoattack(noisy, x, y, key=KEY, epsilon=0.05, attacks=STAND_INS, steps=steps)
  assert "randomized" in report.flags
  probs = lambda v: jax.nn.softmax(_threshold_model(v))
  with pytest.warns(AutoAttackWarning, match="probabilities"):
    report = autoattack(probs, x, y, key=KEY, epsilon=0.05, attacks=STAND_INS, steps=steps)
  assert set(report.flags) == {"probabilities"}
  nan_grad = lambda v: _threshold_model(v) + jnp.sqrt(v - v)[:, :1]
  with pytest.warns(AutoAttackWarning, match="NaN or infinite"):
    report = autoattack(nan_grad, x, y, key=KEY, epsilon=0.05, attacks=STAND_INS,
                           steps=steps)
  assert "nonfinite_gradients" in report.flags
  clean = _quiet(autoattack, _threshold_model, x, y, key=KEY, epsilon=0.05,
                 attacks=STAND_INS, steps=steps)
  assert not clean.flags


def test_bad_inputs_raise():
  x, y = _spy_points(4)
  for kwargs, match in ((dict(norm="l1"), "norm"), (dict(version="rand"), "version"),
                        (dict(epsilon=-1.0), "epsilon"),
                        (dict(epsilon=np.full(4, 0.1)), "scalar"),
                        (dict(batch_size=0), "batch_size"),
                        (dict(steps=[Step("x", "deepfool", {})]), "unknown attack")):
    call = dict(key=KEY, epsilon=0.05, attacks=STAND_INS)
    call.update(kwargs)
    with pytest.raises(checks.InvjaxError, match=match):
      autoattack(_threshold_model, x, y, **call)


def test_real_attacks_registry():
  """The imported APGD, FAB and Square (skipped until those modules exist)."""
  rng = np.random.default_rng(1)
  w = jnp.asarray(rng.normal(size=(8 * 8 * 3, 10)).astype(np.float32) * 0.3)
  logits_fn = lambda v: v.reshape(v.shape[0], -1) @ w
  x = rng.uniform(0.2, 0.8, size=(12, 8, 8, 3)).astype(np.float32)
  y = np.asarray(jnp.argmax(logits_fn(jnp.asarray(x)), 1))
  steps = schedule("standard", "linf", num_steps=10, num_queries=100)
  report = autoattack(logits_fn, x, y, key=KEY, epsilon=4 / 255, steps=steps)
  assert report.clean_accuracy == 1.0 and not report.flags
  assert [a.name for a in report.attacks] == ["apgd-ce", "apgd-t", "fab-t", "square"]
  alone = autoattack(logits_fn, x, y, key=KEY, epsilon=4 / 255, steps=steps[:1])
  assert report.robust_accuracy <= alone.robust_accuracy
  assert report.attacks[0].grad_evals > 0
  broken = sum(a.num_broken for a in report.attacks)
  assert report.robust_accuracy == pytest.approx(1.0 - broken / len(x))
  assert report.broken_by.count(None) == len(x) - broken
